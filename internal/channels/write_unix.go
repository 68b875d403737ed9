//go:build linux || darwin || freebsd || netbsd || openbsd

package channels

import (
	"net"
	"syscall"
)

// rawConn returns nc's descriptor access for writes that never wait; nil
// when nc has none (a TLS connection).
func rawConn(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok || !fastWrites {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// fastWriter writes to sockets without waiting. Each pool worker has one,
// so that the function handed to RawConn.Control is made once, not per
// write.
type fastWriter struct {
	p   []byte
	n   int
	err error
	fn  func(fd uintptr)
}

func newFastWriter() *fastWriter {
	w := &fastWriter{}
	w.fn = w.write
	return w
}

func (w *fastWriter) write(fd uintptr) {
	for {
		w.n, w.err = writeNow(int(fd), w.p)
		if w.err != syscall.EINTR {
			return
		}
	}
}

// try writes as much of p as the socket takes now (0 when it is full);
// an error means the connection is broken. Control holds the descriptor
// for the call, so a concurrent close cannot hand its number to another
// connection meanwhile.
func (w *fastWriter) try(rc syscall.RawConn, p []byte) (int, error) {
	w.p = p
	err := rc.Control(w.fn)
	w.p = nil
	if err != nil {
		return 0, err
	}
	if w.err == syscall.EAGAIN {
		return 0, nil
	}
	return max(w.n, 0), w.err
}
