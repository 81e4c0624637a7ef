package main

import "fmt"

const consentUsage = "usage: pixelrelay consent (not built yet)"

func runConsent(env *cmdEnv, args []string) int {
	fmt.Fprintln(env.stderr, "pixelrelay consent: not built yet")
	return 1
}
