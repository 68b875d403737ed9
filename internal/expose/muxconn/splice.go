package muxconn

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Raw streams: an agent exposing raw TCP gets one yamux stream per user
// connection, which both ends splice to a TCP connection (the server to
// the user's, the agent to its local service's).

// HalfCloser is a connection whose sending side closes on its own
// (*net.TCPConn, *tls.Conn).
type HalfCloser interface {
	net.Conn
	CloseWrite() error
}

// ErrSessionGone is what a splice reports when the session carrying its
// stream ended under it (the other end's process died, the link broke):
// the stream's end of file then was no end of the other end's data.
var ErrSessionGone = errors.New("the agent's session ended")

// Splice carries bytes both ways between st and c until both directions
// ended, then closes both. An end of file in one direction is passed on as
// a half-close (a yamux stream's Close sends its FIN and still reads; c's
// CloseWrite), so the other direction goes on. An error in either
// direction (c reset, the session gone, st reset by the other end) aborts
// both at once: c is reset (RST, not FIN, where c is a TCP connection) and
// st's pending reads and writes end, so nothing hangs. toStream and toConn
// count the bytes carried each way as they go (nil: not counted). It
// returns the first error, nil when both directions ended with end of
// file.
//
// Memory is bounded by the two copy buffers: st's writes wait for the
// other end's yamux window, c's for the kernel's socket buffer.
//
// A half-closed stream lives on for at most the session's
// StreamCloseTimeout (see Config) after its FIN, as yamux counts it from
// the first end's close.
func Splice(st *yamux.Stream, c HalfCloser, toStream, toConn func(n int)) error {
	var (
		once     sync.Once
		firstErr error
	)
	abort := func(err error) {
		once.Do(func() {
			firstErr = err
			Reset(c)
			now := time.Now()
			st.SetReadDeadline(now)
			st.SetWriteDeadline(now)
			st.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := copyCounted(st, c, toStream); err != nil {
			abort(err)
			return
		}
		st.Close() // FIN; st still reads
	})
	wg.Go(func() {
		_, err := copyCounted(c, st, toConn)
		if err == nil && st.Session().IsClosed() {
			// yamux ends a session's streams with a plain end of file.
			err = ErrSessionGone
		}
		if err != nil {
			abort(err)
			return
		}
		c.CloseWrite()
	})
	wg.Wait()
	c.Close()
	st.Close()
	return firstErr
}

// Reset closes c with an RST where it is a TCP connection (the peer
// reads "connection reset", not an end of file).
func Reset(c net.Conn) {
	if tc, ok := c.(interface{ SetLinger(int) error }); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// copyBufs are the splices' copy buffers.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyCounted copies src to dst until src's end of file, calling count
// (when set) after each write.
func copyCounted(dst io.Writer, src io.Reader, count func(int)) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if count != nil && w > 0 {
				count(w)
			}
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}
