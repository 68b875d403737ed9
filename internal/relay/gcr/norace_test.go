//go:build !race

package gcr_test

const raceEnabled = false
