// Package splice moves bytes from one socket to another inside the kernel
// (splice(2) through a pipe), for the relay's large bodies: the relay
// agent's copy from a backend to the relay server, and the server's copy
// from the agent's post to the user.
//
// net.TCPConn.ReadFrom splices too, but each of its splice calls is a
// blocking system call to Go's scheduler: a call that moves a megabyte
// outlasts the scheduler's 20 µs tick, and every return from an idle wait
// wakes the runtime's monitor thread, which then polls every 20 µs for a
// millisecond and more. On a busy relay that polling cost a tenth of the
// process's CPU time per megabyte. The calls here cannot block (the
// sockets and the pipe are non-blocking), so they are made as raw system
// calls and the waits for the sockets go through the runtime's poller
// (syscall.RawConn), deadlines included.
//
// A socket spliced to whose both ends are on loopback is switched to the
// reno congestion control first (unpace). With BBR, the kernel paces a
// socket itself when its queue discipline does not (loopback has none):
// a timer for nearly every 64 KiB segment, since a splice hands the
// socket a whole megabyte at once. On the 2-core VM of BENCHMARKS.md
// those timers cost the relay server about half its CPU per MB of a
// download, and the user's side more; on loopback there is no network
// queue for pacing to protect, and reno does not pace. Sockets to other
// hosts keep the system's congestion control. A connection dialed for
// splicing to (DialControl) is switched before it connects, so that BBR
// never starts on it: the kernel then does not even check its pacing.
// Accepting the node's loopback connections so as well (a listener with
// DialControl, which they inherit) measured no better than switching the
// user's socket at its first splice, and was left out.
package splice

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
)

// moved counts the bytes spliced, for Moved.
var moved atomic.Int64

// Moved returns how many bytes this process has spliced so far (tests
// check that a path splices).
func Moved() int64 { return moved.Load() }

// Reader reads at most N bytes from the socket C, as io.LimitedReader
// would. Written to a socket (WriteTo, which io.Copy and
// net.TCPConn.ReadFrom use), the bytes are spliced; to anything else they
// are copied through a buffer.
type Reader struct {
	C *net.TCPConn
	N int64
}

// Read reads from C, at most N bytes in all.
func (r *Reader) Read(b []byte) (int, error) {
	if r.N <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > r.N {
		b = b[:r.N]
	}
	n, err := r.C.Read(b)
	r.N -= int64(n)
	return n, err
}

// socket is a writer that splicing can reach: a connection with a file
// descriptor (net.TCPConn, and what net.TCPConn.ReadFrom hands io.Copy).
type socket interface {
	net.Conn
	syscall.Conn
}

// WriteTo writes the next N bytes of C to w, spliced when w is a socket
// and splicing works here. Like io.Copy, it returns nil at C's end,
// before N bytes when C ended early (N says how many are missing).
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	if sc, ok := w.(socket); ok && supported {
		if dst, err := sc.SyscallConn(); err == nil {
			if src, err := r.C.SyscallConn(); err == nil {
				if onLoopback(sc) {
					unpace(dst)
				}
				n, err := pump(dst, src, r.N)
				r.N -= n
				return n, err
			}
		}
	}
	return io.Copy(w, readerOnly{r})
}

// Copy copies n bytes (fewer when src ends first) from src to dst,
// spliced.
func Copy(dst, src *net.TCPConn, n int64) (int64, error) {
	return (&Reader{C: src, N: n}).WriteTo(dst)
}

// DialControl is for net.Dialer.Control: a connection dialed to a
// loopback address starts with the congestion control that the kernel
// does not pace (see the package comment). Other connections are left
// as they are.
func DialControl(network, address string, c syscall.RawConn) error {
	if host, _, err := net.SplitHostPort(address); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			unpace(c)
		}
	}
	return nil
}

// onLoopback reports whether both ends of c are loopback addresses.
func onLoopback(c net.Conn) bool {
	l, lok := c.LocalAddr().(*net.TCPAddr)
	r, rok := c.RemoteAddr().(*net.TCPAddr)
	return lok && rok && l.IP.IsLoopback() && r.IP.IsLoopback()
}

// readerOnly hides Reader's WriteTo from io.Copy.
type readerOnly struct{ io.Reader }
