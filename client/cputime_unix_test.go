//go:build unix

package client_test

import (
	"syscall"
	"time"
)

// cpuTime is the process's CPU time (user and system) so far: the
// benchmarks' CPU per operation, which the machine's other load moves
// less than the time per operation.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
