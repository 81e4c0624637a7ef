package main

import "fmt"

const serveUsage = "usage: pixelrelay serve (not built yet)"

func runServe(env *cmdEnv, args []string) int {
	fmt.Fprintln(env.stderr, "pixelrelay serve: not built yet")
	return 1
}
