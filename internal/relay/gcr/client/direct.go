package client

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// directBackend performs requests against a plain-HTTP backend on
// connections of its own (Options.DirectBackend): the goroutine that
// serves a request writes it to a kept-alive connection and reads the
// response from it itself. net/http's Transport hands every request to
// a writing and a reading goroutine of the connection and back, with a
// context and a connection lookup each; here there is none of that.
// The messages are net/http's own (Request.Write, ReadResponse), so
// what reaches the backend is what the Transport would send. Requests
// asking for an upgrade go to the Transport (fallback), whose response
// body is the connection for the bytes after a 101.
type directBackend struct {
	addr     string // host:port of the backend
	fallback func(*http.Request) (*http.Response, error)
	maxIdle  int
	dialer   net.Dialer
	// peekAfter: a connection idle for less is used again without
	// peeking at it first (0: always peeked). For the relay server's
	// connections: it closes idle ones only after a long timeout, polls
	// are sent again when it did, and posts are retried (Client.send).
	peekAfter time.Duration
	// retryPeekAfter is peekAfter for requests that are sent again on a
	// new connection when the one they went out on turns out closed
	// (idempotent, see RoundTrip): for them a peek only saves that
	// rare second send, and costs a system call every time. Kept short,
	// so that a connection idle long enough for the backend's idle
	// timeout to close it, or to send something unasked, is still
	// peeked at. 0: always peeked.
	retryPeekAfter time.Duration

	mu     sync.Mutex
	idle   []*backendConn // most recently used last
	closed bool
}

// backendConn is a connection to the backend and its buffers.
type backendConn struct {
	nc     net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	ctx    context.Context // closes nc when it ends (see dial)
	stop   func() bool     // unregisters that
	reused bool
	idled  time.Time // when it was last given back
}

// close closes the connection for good.
func (bc *backendConn) close() {
	bc.stop()
	bc.nc.Close()
}

func newDirectBackend(addr string, maxIdle int, fallback func(*http.Request) (*http.Response, error)) *directBackend {
	return &directBackend{addr: addr, maxIdle: maxIdle, fallback: fallback}
}

// RoundTrip performs req. A request that fails on a kept-alive connection
// before any of the response came (the backend closed it while idle) is
// sent again once on a new connection, as net/http does, when it is
// idempotent or was not written.
func (d *directBackend) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Upgrade") != "" {
		return d.fallback(req)
	}
	for attempt := 0; ; attempt++ {
		bc, err := d.get(req.Context(), attempt == 0 && retriable(req))
		if err != nil {
			return nil, err
		}
		resp, written, err := bc.roundTrip(req)
		if err == nil {
			d.track(bc, resp)
			return resp, nil
		}
		bc.close()
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		retry := bc.reused && attempt == 0 && (!written || idempotent(req.Method)) && isClosedIdle(err)
		if !retry {
			return nil, err
		}
		if req.GetBody != nil {
			if req.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
	}
}

// roundTrip writes req and reads the response's head; written says the
// request went out whole.
func (bc *backendConn) roundTrip(req *http.Request) (resp *http.Response, written bool, err error) {
	if err := req.Write(bc.bw); err != nil {
		return nil, false, err
	}
	if err := bc.bw.Flush(); err != nil {
		return nil, false, err
	}
	for {
		resp, err = http.ReadResponse(bc.br, req)
		if err != nil {
			return nil, true, err
		}
		// Informational answers (100 Continue, 103 Early Hints) are
		// skipped, as the Transport does.
		if resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, true, nil
		}
	}
}

// isClosedIdle reports whether err says the connection was closed before
// the response started.
func isClosedIdle(err error) bool {
	var ne *net.OpError
	return err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne)
}

func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "":
		return true
	}
	return false
}

// track makes resp's body give its connection back once read to its end,
// or close it when the body is closed before.
func (d *directBackend) track(bc *backendConn, resp *http.Response) {
	if resp.Body == http.NoBody {
		d.done(bc, resp.Close)
		return
	}
	resp.Body = &directBody{d: d, bc: bc, rc: resp.Body, left: resp.ContentLength, close: resp.Close}
}

// retriable reports whether req is sent again when the connection it
// went out on was closed before the answer (see RoundTrip).
func retriable(req *http.Request) bool {
	return idempotent(req.Method) && (req.Body == nil || req.Body == http.NoBody || req.GetBody != nil)
}

// get returns an idle connection the backend has not closed meanwhile,
// or a new one. retry says the request is sent again if the connection
// turns out closed (see retryPeekAfter).
func (d *directBackend) get(ctx context.Context, retry bool) (*backendConn, error) {
	after := d.peekAfter
	if retry {
		after = max(after, d.retryPeekAfter)
	}
	for {
		bc := d.takeIdle(ctx)
		if bc == nil {
			return d.dial(ctx)
		}
		if bc.br.Buffered() == 0 && ((after > 0 && time.Since(bc.idled) < after) || !closedWhileIdle(bc.nc)) {
			bc.reused = true
			return bc, nil
		}
		bc.close()
	}
}

func (d *directBackend) takeIdle(ctx context.Context) *backendConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.idle) - 1; i >= 0; i-- {
		if bc := d.idle[i]; bc.ctx == ctx {
			d.idle = slices.Delete(d.idle, i, i+1)
			return bc
		}
	}
	return nil
}

// dial opens a connection for requests of ctx, closed when ctx ends: a
// request in progress then fails, as with the Transport. Connections are
// kept for requests of the same context only (the relay client's are all
// of Run's).
func (d *directBackend) dial(ctx context.Context) (*backendConn, error) {
	nc, err := d.dialer.DialContext(ctx, "tcp", d.addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	return &backendConn{nc: nc, br: bufio.NewReaderSize(nc, 16<<10), bw: bufio.NewWriterSize(nc, 8<<10), ctx: ctx, stop: stop}, nil
}

// done gives a connection whose exchange is over back, or closes it.
func (d *directBackend) done(bc *backendConn, closeIt bool) {
	if !closeIt && bc.ctx.Err() == nil {
		d.mu.Lock()
		if !d.closed && len(d.idle) < d.maxIdle {
			if d.peekAfter > 0 || d.retryPeekAfter > 0 {
				bc.idled = time.Now()
			}
			d.idle = append(d.idle, bc)
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
	}
	bc.close()
}

// closeIdle closes the idle connections, and those given back later.
func (d *directBackend) closeIdle() {
	d.mu.Lock()
	idle := d.idle
	d.idle, d.closed = nil, true
	d.mu.Unlock()
	for _, bc := range idle {
		bc.close()
	}
}

// directBody is a response body on a directBackend connection: read to
// its end, it gives the connection back; closed before, it closes it
// (the rest of a long body is not read for nothing).
type directBody struct {
	d     *directBackend
	bc    *backendConn
	rc    io.ReadCloser
	left  int64 // bytes still to come when the length is known; -1: unknown
	eof   bool
	close bool // the backend closes the connection after this response
	once  sync.Once
}

func (b *directBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *directBody) Close() error {
	b.once.Do(func() {
		// A body of known length read whole is complete without its EOF
		// (io.ReadFull stops before it).
		complete := b.eof || b.left == 0
		b.d.done(b.bc, b.close || !complete)
	})
	return nil
}
