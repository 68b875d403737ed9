//go:build !unix

package client_test

import "time"

// cpuTime is not measured here: the benchmarks report zero CPU.
func cpuTime() time.Duration { return 0 }
