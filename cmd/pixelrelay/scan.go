package main

import "fmt"

const scanUsage = "usage: pixelrelay scan (not built yet)"

func runScan(env *cmdEnv, args []string) int {
	fmt.Fprintln(env.stderr, "pixelrelay scan: not built yet")
	return 1
}
