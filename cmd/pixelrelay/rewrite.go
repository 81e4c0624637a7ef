package main

import "fmt"

const rewriteUsage = "usage: pixelrelay rewrite (not built yet)"

func runRewrite(env *cmdEnv, args []string) int {
	fmt.Fprintln(env.stderr, "pixelrelay rewrite: not built yet")
	return 1
}
