//go:build !race

package gcrrelay_test

const raceEnabled = false
