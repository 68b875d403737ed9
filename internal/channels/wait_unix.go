//go:build linux || darwin || freebsd || netbsd || openbsd

package channels

import (
	"net"
	"syscall"
)

// waitable reports whether waitReadable can wait for nc: whether it is a
// socket (a TLS connection is not).
func waitable(nc net.Conn) bool {
	_, ok := nc.(syscall.Conn)
	return ok
}

// waitReadable parks the caller until nc has data (or is closed) without
// reading it, through the runtime's poller: a goroutine parked here sits
// on a shallow stack, which the garbage collector shrinks, so an idle
// websocket keeps a small stack for the rest of its life. For a
// connection that is not waitable it returns at once.
func waitReadable(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
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
}
