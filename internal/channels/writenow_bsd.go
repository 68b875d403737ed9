//go:build darwin || freebsd || netbsd || openbsd

package channels

import "syscall"

// writeNow is write(2) on a non-blocking socket.
func writeNow(fd int, p []byte) (int, error) { return syscall.Write(fd, p) }
