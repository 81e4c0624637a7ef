package main

import "fmt"

const reportUsage = "usage: pixelrelay report (not built yet)"

func runReport(env *cmdEnv, args []string) int {
	fmt.Fprintln(env.stderr, "pixelrelay report: not built yet")
	return 1
}
