package gcr

import (
	"net"

	"golang.org/x/sys/unix"
)

// spliceSupported: a poster's socket is handed to the user's response
// here, which splices it (relay/splice), its progress watched through
// TCP_INFO and SIOCINQ (progressOf).
const spliceSupported = true

// socketProgress is where a socket's receiving stands: the bytes received
// from the peer, and those still unread in the receive queue.
type socketProgress struct {
	received uint64
	queued   int
}

// progressOf returns where c's receiving stands (the zero value when it
// cannot tell).
func progressOf(c *net.TCPConn) socketProgress {
	var p socketProgress
	rc, err := c.SyscallConn()
	if err != nil {
		return p
	}
	rc.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			p.received = ti.Bytes_received
		}
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			p.queued = v
		}
	})
	return p
}
