package relay

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// countingReader counts the bytes read through it. With noClose its
// Close leaves rc open.
type countingReader struct {
	rc      io.ReadCloser
	n       *atomic.Int64
	noClose bool
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n.Add(int64(n))
	return n, err
}

func (r *countingReader) Close() error {
	if r.noClose {
		return nil
	}
	return r.rc.Close()
}

// respBody wraps a backend's response body: it counts bytes to the user,
// records how the body ended, and releases the backend's in-flight slot
// (of reg, when set) once, on Close.
type respBody struct {
	rc   io.ReadCloser
	c    *call
	reg  *Registration
	once sync.Once
}

func (b *respBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.c.down.Add(int64(n))
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		if !b.c.upgraded.Load() {
			b.c.setOutcome("ok")
		}
	case b.c.in.Context().Err() != nil:
		b.c.setOutcome("canceled")
	case !b.c.upgraded.Load():
		b.c.setOutcome("aborted")
	}
	return n, err
}

func (b *respBody) Close() error {
	err := b.rc.Close()
	if b.reg != nil {
		b.once.Do(b.release)
	}
	return err
}

func (b *respBody) release() { b.reg.inflight.Add(-1) }

// rwBody is respBody for the io.ReadWriteCloser of a 101 response: the
// user's bytes are written to it.
type rwBody struct {
	respBody
	w io.Writer
}

func (b *rwBody) Write(p []byte) (int, error) {
	n, err := b.w.Write(p)
	b.c.up.Add(int64(n))
	return n, err
}

// rwBodyCW is rwBody for a backend connection that can half-close.
type rwBodyCW struct {
	rwBody
	cw interface{ CloseWrite() error }
}

func (b *rwBodyCW) CloseWrite() error { return b.cw.CloseWrite() }

// wrapBody wraps body, keeping its ability to be written to and
// half-closed, which the reverse proxy looks for on 101 responses.
func wrapBody(body io.ReadCloser, c *call, reg *Registration) io.ReadCloser {
	if body == nil {
		body = emptyBody{}
	}
	w, ok := body.(io.Writer)
	if !ok {
		if c.rb.c == nil {
			// The call's own: most responses need no other.
			c.rb = respBody{rc: body, c: c, reg: reg}
			return &c.rb
		}
		return &respBody{rc: body, c: c, reg: reg}
	}
	if cw, ok := body.(interface{ CloseWrite() error }); ok {
		b := &rwBodyCW{cw: cw}
		b.rc, b.c, b.reg, b.w = body, c, reg, w
		return b
	}
	b := &rwBody{w: w}
	b.rc, b.c, b.reg = body, c, reg
	return b
}

type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

// bufferPool lends the reverse proxy its copy buffers. They are larger
// than the proxy's own 32 KiB: a large body goes to the user in writes of
// the buffer's size (streams are flushed at every write).
type bufferPool struct{}

// CopyBufferSize is the size of the buffers that carry response bodies to
// users.
const CopyBufferSize = 128 << 10

var buffers = sync.Pool{New: func() any { b := make([]byte, CopyBufferSize); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

// limitedBody fails with *http.MaxBytesError once more than limit bytes
// were read.
type limitedBody struct {
	rc    io.ReadCloser
	left  int64
	limit int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, &http.MaxBytesError{Limit: b.limit}
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	if int64(n) > b.left {
		n = int(b.left)
		b.left = -1
		return n, &http.MaxBytesError{Limit: b.limit}
	}
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
