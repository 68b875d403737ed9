//go:build darwin || freebsd || netbsd || openbsd

package channels

import (
	"syscall"
	"unsafe"
)

// writeNow is write(2) on a non-blocking socket.
func writeNow(fd int, p []byte) (int, error) { return syscall.Write(fd, p) }

// writevNow writes the buffers of iov one write(2) after another, up to
// the first the socket does not take whole.
func writevNow(fd int, iov []syscall.Iovec) (int, error) {
	total := 0
	for _, v := range iov {
		n, err := syscall.Write(fd, unsafe.Slice(v.Base, v.Len))
		if err != nil {
			if total > 0 && err == syscall.EAGAIN {
				return total, nil
			}
			return total, err
		}
		total += n
		if uint64(n) < uint64(v.Len) {
			break
		}
	}
	return total, nil
}
