//go:build race

package gcrrelay_test

// raceEnabled: the race detector slows large transfers down tenfold.
const raceEnabled = true
