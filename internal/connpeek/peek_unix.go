//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package connpeek

import (
	"errors"
	"net"
	"syscall"
)

// IdleClosed reports whether the peer closed c, or sent on it unasked,
// while it was idle (under TLS it looks at the TCP connection, where a
// close_notify is data unasked). A connection it reports is not to be
// used again. It answers false where c is no socket.
func IdleClosed(c net.Conn) bool {
	if t, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = t.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0, err == nil: // data unasked, or the end (0 bytes)
			closed = true
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
		default:
			closed = true
		}
		return true
	})
	return closed || err != nil
}
