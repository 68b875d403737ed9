//go:build race

package gcr_test

// raceEnabled: the race detector slows large transfers down tenfold.
const raceEnabled = true
