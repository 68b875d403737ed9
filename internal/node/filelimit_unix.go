//go:build unix

package node

import "syscall"

// fileLimit is the process's open-file limit (its soft limit, which the Go
// runtime raises to the hard limit at start); 0 when unknown.
func fileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return uint64(lim.Cur)
}
