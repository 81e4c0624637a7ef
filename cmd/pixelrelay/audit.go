package main

import "fmt"

const auditUsage = "usage: pixelrelay audit (not built yet)"

func runAudit(env *cmdEnv, args []string) int {
	fmt.Fprintln(env.stderr, "pixelrelay audit: not built yet")
	return 1
}
