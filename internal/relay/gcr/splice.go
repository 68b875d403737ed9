package gcr

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay/splice"
)

// Spliced response bodies.
//
// A large streamed body (see stream.go) posted with its length declared
// and "Connection: close" (postern relay posts large bodies of known
// length so, each on a connection of its own) is not read through
// net/http: the handler takes the poster's connection over (hijack), and
// the user side hands the connection (as a splice.Reader) to the user's
// response, whose ReadFrom splices it to the user's connection when that
// is a plain TCP connection and the answer's length is known (not
// chunked): the body's bytes never enter the server. The handler answers the post on the
// connection itself and closes it, which the poster asked for.
//
// The body goes in steps, the poster's read deadline renewed before each
// and, while the poster's socket moves, during one (watchStep), so that
// it bounds the poster's silence (and a user's stop) as the reads through
// the buffer do.

const (
	// spliceMinBytes is the smallest body spliced.
	spliceMinBytes = 1 << 20
	// spliceFirstStep is the first step; it doubles, up to
	// spliceMaxStep, while steps take less than a sixteenth of the
	// deadline.
	spliceFirstStep = 512 << 10
	spliceMaxStep   = 16 << 20
)

// splicedBytes counts the bytes handed to a user's response as a
// connection to splice from (tests check that the path is taken).
var splicedBytes atomic.Int64

// spliceable reports whether the post r, of which start bytes were read
// and whose body field of n bytes starts at at, can be taken over: it
// asks to close its connection, its length is declared, its body is large
// and the fields after it are within streamTailBytes.
func spliceable(r *http.Request, start, at, n int) bool {
	end := int64(at) + int64(n)
	return r.Close && r.ProtoMajor == 1 && r.ContentLength > 0 && n >= spliceMinBytes &&
		int64(start) <= end && end <= r.ContentLength && r.ContentLength-end <= streamTailBytes
}

// hijacked is a poster's connection taken over in the middle of its body.
type hijacked struct {
	conn net.Conn
	br   *bufio.Reader // what net/http read ahead, then the connection
	// src is the TCP socket under conn (nil when there is none: the
	// body is read, not spliced).
	src     *net.TCPConn
	tail    int // bytes of the fields after the body
	timeout time.Duration
}

// hijack takes over the connection of the post r, whose body field of n
// bytes starts at at.
func hijack(rc *http.ResponseController, r *http.Request, at, n int, timeout time.Duration) (*hijacked, error) {
	conn, brw, err := rc.Hijack()
	if err != nil {
		return nil, err
	}
	h := &hijacked{conn: conn, br: brw.Reader, tail: int(r.ContentLength - int64(at) - int64(n)), timeout: timeout}
	switch c := conn.(type) {
	case *net.TCPConn:
		h.src = c
	case interface{ TCPConn() (*net.TCPConn, bool) }: // the node's accepted connections
		h.src, _ = c.TCPConn()
	}
	if !spliceSupported {
		h.src = nil
	}
	return h, nil
}

// readTail reads the fields after the body.
func (h *hijacked) readTail() ([]byte, error) {
	b := make([]byte, h.tail)
	if _, err := io.ReadFull(h.br, b); err != nil {
		return nil, err
	}
	return b, nil
}

// answer writes the answer to the post (ok for a nil err, else err's, as
// the handler would have), notes its status for the request's metrics and
// log line, and closes the connection.
func (h *hijacked) answer(w http.ResponseWriter, r *http.Request, err error) {
	defer h.conn.Close()
	a := &connAnswer{h: http.Header{}}
	if err == nil {
		a.h["Content-Type"] = textPlain
		a.Write(okBody)
	} else {
		e := httpapi.ToError(r, err)
		if e == nil {
			return // nobody to answer
		}
		httpapi.MarkError(a.h, e)
		writeError(a, r, e)
	}
	httpapi.RecordStatus(w, a.status)
	h.conn.SetWriteDeadline(time.Now().Add(h.timeout))
	if _, err := h.conn.Write(a.bytes()); err != nil {
		return
	}
	if cw, ok := h.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// connAnswer is the answer to a post whose connection was taken over,
// collected to be written as one HTTP/1.1 message.
type connAnswer struct {
	h      http.Header
	status int
	body   []byte
}

func (a *connAnswer) Header() http.Header { return a.h }

func (a *connAnswer) WriteHeader(code int) {
	if a.status == 0 {
		a.status = code
	}
}

func (a *connAnswer) Write(b []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	a.body = append(a.body, b...)
	return len(b), nil
}

// bytes is the whole message, which closes the connection.
func (a *connAnswer) bytes() []byte {
	a.WriteHeader(http.StatusOK)
	a.h["Content-Length"] = []string{strconv.Itoa(len(a.body))}
	a.h["Connection"] = []string{"close"}
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 " + strconv.Itoa(a.status) + " " + http.StatusText(a.status) + "\r\n")
	a.h.Write(&b)
	b.WriteString("\r\n")
	b.Write(a.body)
	return b.Bytes()
}

// lengthKnown reports whether the user's answer declares its length (it
// is not chunked, so net/http's response splices into it).
func (r *bodyReader) lengthKnown() bool {
	_, ok := r.resp.Header["Content-Length"]
	return ok && r.resp.Request.Method != http.MethodHead
}

// watchStep watches a step in progress: every quarter of the deadline,
// if the poster's socket moved since (bytes came from the poster, or
// were taken from its receive queue for the user), it renews the
// poster's read deadline and marks the request active, as every read
// through the buffer does. A step that waits for a user who reads slowly
// or pauses awhile so goes on; a silent poster, or a user who stops
// reading for good, still meets the deadline (and the request its
// inactivity timeout). The returned func stops it.
func (s *bodyStream) watchStep(p *pending) (stop func()) {
	var mu sync.Mutex
	var t *time.Timer
	stopped := false
	every := s.timeout / 4
	last := progressOf(s.hj.src)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if now := progressOf(s.hj.src); now != last {
			last = now
			s.deadline(time.Now().Add(s.timeout))
			p.touch()
		}
		t.Reset(every)
	})
	return func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		t.Stop()
	}
}

// readAhead reports whether the stream still has bytes read ahead of the
// connection taken over: those read with the message's start, and those
// net/http's reader holds.
func (s *bodyStream) readAhead() bool {
	return s.left > 0 && (len(s.have) > 0 || s.hj.br.Buffered() > 0)
}

// spliceStream hands the rest of the body, on the connection taken over,
// to rf (the user's response) in steps, once nothing is read ahead of it
// (readAhead).
func (r *bodyReader) spliceStream(rf io.ReaderFrom) (n int64, userErr bool, err error) {
	s := r.stream
	step := spliceFirstStep
	for s.left > 0 {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return n, false, errStreamAbandoned
		}
		t0 := time.Now()
		s.renewed = t0
		s.deadline(t0.Add(s.timeout))
		want := int64(min(s.left, step))
		lr := &splice.Reader{C: s.hj.src, N: want}
		stop := s.watchStep(r.p)
		k, err := rf.ReadFrom(lr)
		stop()
		s.left -= int(k)
		n += k
		if k > 0 {
			r.p.touch()
			splicedBytes.Add(k)
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return n, false, err // the poster's silence
		case err != nil:
			// Most likely the user's side (a reset or a closed pipe); a
			// poster that resets its connection ends its post either way.
			return n, true, err
		case k < want:
			return n, false, io.ErrUnexpectedEOF // the poster closed
		}
		if time.Since(t0) < s.timeout/16 && step < spliceMaxStep {
			step *= 2
		}
	}
	return n, false, nil
}
