package main

import "fmt"

const beaconUsage = "usage: pixelrelay beacon (not built yet)"

func runBeacon(env *cmdEnv, args []string) int {
	fmt.Fprintln(env.stderr, "pixelrelay beacon: not built yet")
	return 1
}
