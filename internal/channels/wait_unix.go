//go:build linux || darwin || freebsd || netbsd || openbsd

package channels

import (
	"net"
	"syscall"
)

// waitReadable parks the caller until nc has data (or is closed) without
// reading it, through the runtime's poller: a goroutine parked here sits
// on a shallow stack, which the garbage collector shrinks, so an idle
// websocket keeps a small stack for the rest of its life. It reports
// false, at once, for a connection that is not a socket (TLS): there is no
// waiting without reading then.
func waitReadable(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait for the poller
			}
			return true // data, end of stream or an error: the real read reports it
		}
	})
	return true
}
