package expose

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/postern/postern/internal/httpapi"
)

// The native agents' plain requests, carried without http.Transport.
//
// An http.Transport hands each request to its connection's write loop
// and each answer back from its read loop: on a yamux stream, whose own
// writes and reads already pass through the session's send and receive
// loops, those are two goroutine switches more per request, and the
// loops' channels and selects besides. A request that is only a request
// line and headers (the replayable methods without a body: most of what
// users send) needs none of that: the goroutine serving the user writes
// it on an idle stream and reads the answer itself. Everything else
// (bodies, upgrades, Expect, other methods) goes through the agent's
// http.Transport as before: it is what sends a body while the answer
// comes, relays 101s and knows which requests may be sent again. The
// agent cannot tell the two apart: each stream carries HTTP/1.1
// requests one after the other either way.

// Limits of the direct path, those of the http.Transport beside it.
const (
	// directMaxIdle is how many idle streams an agent's direct path
	// keeps (the transport's MaxIdleConnsPerHost).
	directMaxIdle = 256
	// directIdleTimeout closes a stream idle this long (the transport's
	// IdleConnTimeout).
	directIdleTimeout = 90 * time.Second
	// directMaxHeaderBytes bounds an answer's header (the transport's
	// default MaxResponseHeaderBytes).
	directMaxHeaderBytes = 10 << 20
	// directMax1xx bounds the informational answers before the final one.
	directMax1xx = 8
	// directReadBuf is a stream's read buffer: headers fit, large bodies
	// bypass it (reads at least as large go straight through).
	directReadBuf = 4 << 10
	// directSweepEvery is how often idle streams are checked for an end
	// the agent closed (see sweep).
	directSweepEvery = time.Second
)

// agentBackend is an HTTP agent's RoundTripper on the hub: the direct
// path for the requests it carries, the agent's http.Transport for the
// rest.
type agentBackend struct {
	direct *directTransport
	tr     *http.Transport
}

func (b *agentBackend) RoundTrip(req *http.Request) (*http.Response, error) {
	if directOK(req) {
		return b.direct.RoundTrip(req)
	}
	return b.tr.RoundTrip(req)
}

// close closes the idle streams of both paths; the direct path keeps no
// stream that is released afterwards.
func (b *agentBackend) close() {
	b.direct.close()
	b.tr.CloseIdleConnections()
}

// directOK reports whether req takes the direct path: a replayable
// method (a request that came to nothing on a stream found dead may be
// sent again on a new one), no body, no upgrade, no Expect.
func directOK(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		return false
	}
	return (req.Body == nil || req.Body == http.NoBody) && req.ContentLength <= 0 &&
		len(req.TransferEncoding) == 0 && len(req.Trailer) == 0 &&
		req.Header["Expect"] == nil && !httpapi.HasToken(req.Header["Connection"], "upgrade")
}

// directTransport sends requests on streams it opens with open and keeps
// between requests, at most directMaxIdle of them idle (the most recently
// used are taken first; the oldest go once past directIdleTimeout).
type directTransport struct {
	open func(ctx context.Context) (*yamux.Stream, error)

	mu     sync.Mutex
	idle   []*directStream
	closed bool
	sweep  *time.Timer // runs sweepIdle while streams are idle
	armed  bool        // sweep is due
}

func newDirectTransport(open func(ctx context.Context) (*yamux.Stream, error)) *directTransport {
	return &directTransport{open: open}
}

// directStream is one stream of the direct path and its reader.
type directStream struct {
	st    *yamux.Stream
	in    countedReader
	br    *bufio.Reader
	since time.Time // idle since
	// aborter is abort as a func value, made once: each request
	// watches its context with it.
	aborter func()
}

// countedReader reads a stream, counting its bytes, and fails once more
// than left were read while left >= 0 (an answer's header).
type countedReader struct {
	r    io.Reader
	left int64
	got  int64
}

var errHeaderTooLarge = fmt.Errorf("the agent's answer has a header over %d bytes", directMaxHeaderBytes)

func (c *countedReader) Read(p []byte) (int, error) {
	if c.left >= 0 {
		if c.left == 0 {
			return 0, errHeaderTooLarge
		}
		p = p[:min(int64(len(p)), c.left)]
	}
	n, err := c.r.Read(p)
	c.got += int64(n)
	if c.left >= 0 {
		c.left -= int64(n)
	}
	return n, err
}

// abort ends the stream at once: blocked reads return, and the agent
// gets its end (it closes the pair).
func (s *directStream) abort() {
	s.st.SetDeadline(time.Unix(1, 0))
	s.st.Close()
}

// writers lends the buffers requests are written through: one per
// request in flight, not one per idle stream.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// errNothingBack: a reused stream failed before any of the answer came
// (the agent closed it while it was idle); the request may be sent again.
var errNothingBack = errors.New("the agent's stream ended before its answer")

// RoundTrip sends req on an idle stream, or a new one, and returns the
// answer, whose body reads from the stream; the stream is kept for the
// next request once the body was read to its end, unless either side
// asked to close. When a reused stream turns out dead before the answer
// started, req is sent again: on the next idle stream or a new one (a
// stream found dead says the others idle as long may be too, so they are
// closed first).
func (d *directTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	for {
		s, reused, err := d.get(req.Context())
		if err != nil {
			return nil, err
		}
		resp, err := d.exchange(s, req)
		if reused && errors.Is(err, errNothingBack) && req.Context().Err() == nil {
			d.dropIdle()
			continue
		}
		return resp, err
	}
}

// exchange sends req on s and reads the answer's header; on an error s
// is aborted.
func (d *directTransport) exchange(s *directStream, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	stop := context.AfterFunc(ctx, s.aborter)
	fail := func(err error) (*http.Response, error) {
		stop()
		s.abort()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(s.st)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	if err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
		return fail(fmt.Errorf("%w: %w", errNothingBack, err))
	}
	// A write that failed because the session ended may have been sent
	// all the same: yamux reports a write as failed when its session
	// shuts down before the writer saw it confirmed, and an agent that
	// stops answers the requests it has before it closes. So the stream
	// is read: it holds that answer, or ends at once with nothing (and
	// the request may go again).
	s.in.left, s.in.got = directMaxHeaderBytes, 0
	resp, err := readAnswer(s.br, req)
	s.in.left = -1
	switch {
	case err != nil && s.in.got == 0:
		return fail(fmt.Errorf("%w: %w", errNothingBack, err))
	case err != nil:
		return fail(err)
	case resp.StatusCode == http.StatusSwitchingProtocols:
		// Only an upgrade request may be answered so; those go through
		// the transport.
		resp.Body.Close()
		return fail(errors.New("the agent switched protocols unasked"))
	}
	keep := !resp.Close && !req.Close
	if resp.Body == http.NoBody {
		d.release(s, stop, keep)
		return resp, nil
	}
	resp.Body = &directBody{rc: resp.Body, d: d, s: s, stop: stop, keep: keep, ctx: ctx}
	return resp, nil
}

// readAnswer reads the final answer to req, passing informational ones
// to the request's trace (the reverse proxy relays them to the user).
func readAnswer(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	trace := httptrace.ContextClientTrace(req.Context())
	for n := 0; ; n++ {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		code := resp.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			return resp, nil
		}
		if n == directMax1xx {
			return nil, fmt.Errorf("the agent sent more than %d informational answers", directMax1xx)
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, err
			}
		}
	}
}

// directBody is an answer's body on the direct path: read to its end, it
// gives its stream back for the next request; closed before, it aborts
// the stream (the rest of the body is not waited for).
type directBody struct {
	rc   io.ReadCloser
	d    *directTransport
	s    *directStream
	stop func() bool
	keep bool
	ctx  context.Context
	done atomic.Bool
}

func (b *directBody) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
	case err != nil:
		b.finish(false)
		if b.ctx.Err() != nil {
			err = b.ctx.Err()
		}
	}
	return n, err
}

func (b *directBody) Close() error {
	b.finish(false)
	return nil
}

// finish settles the stream once: kept when the body was read to its end
// and both sides keep the connection, else aborted.
func (b *directBody) finish(eof bool) {
	if b.done.Swap(true) {
		return
	}
	if eof {
		b.d.release(b.s, b.stop, b.keep)
		return
	}
	b.stop()
	b.s.abort()
}

// release settles s after a whole answer: back to the idle streams when
// keep and nothing more came (an agent sends nothing between answers),
// unless the request's context ended meanwhile (stop then reports that
// the stream was aborted).
func (d *directTransport) release(s *directStream, stop func() bool, keep bool) {
	if !stop() {
		return // aborted
	}
	if !keep || s.br.Buffered() > 0 {
		s.abort()
		return
	}
	s.since = time.Now()
	var old *directStream
	d.mu.Lock()
	if d.closed || len(d.idle) >= directMaxIdle {
		d.mu.Unlock()
		s.abort()
		return
	}
	if len(d.idle) > 0 && s.since.Sub(d.idle[0].since) > directIdleTimeout {
		old = d.idle[0]
		d.idle = d.idle[:copy(d.idle, d.idle[1:])]
	}
	d.idle = append(d.idle, s)
	d.armLocked()
	d.mu.Unlock()
	if old != nil {
		old.abort()
	}
}

// armLocked makes sure a sweep is due while streams are idle.
func (d *directTransport) armLocked() {
	if d.armed || d.closed || len(d.idle) == 0 {
		return
	}
	d.armed = true
	if d.sweep == nil {
		d.sweep = time.AfterFunc(directSweepEvery, d.sweepIdle)
		return
	}
	d.sweep.Reset(directSweepEvery)
}

// sweepIdle closes the idle streams whose agent end was closed, and
// those idle for longer than directIdleTimeout (so an agent without
// requests is left with none, and no sweep is due). Nothing
// reads an idle stream (http.Transport's read loop did), so without it
// such a stream would wait for its next request to be found dead, and
// an agent that waits for the server's end before it stops (those
// before this server) would wait as long.
func (d *directTransport) sweepIdle() {
	var dead []*directStream
	now := time.Now()
	d.mu.Lock()
	d.armed = false
	live := d.idle[:0]
	for _, s := range d.idle {
		if now.Sub(s.since) > directIdleTimeout || s.ended() {
			dead = append(dead, s)
		} else {
			live = append(live, s)
		}
	}
	clear(d.idle[len(live):])
	d.idle = live
	d.armLocked()
	d.mu.Unlock()
	for _, s := range dead {
		s.abort()
	}
}

// ended reports, without waiting, whether the agent closed its end of an
// idle stream or sent on it unasked (either way it is done for).
func (s *directStream) ended() bool {
	if s.br.Buffered() > 0 {
		return true
	}
	s.st.SetReadDeadline(time.Unix(1, 0))
	var b [1]byte
	n, err := s.st.Read(b[:])
	s.st.SetReadDeadline(time.Time{})
	return n > 0 || !errors.Is(err, yamux.ErrTimeout)
}

// get returns the most recently used idle stream (reused), or a new one.
func (d *directTransport) get(ctx context.Context) (s *directStream, reused bool, err error) {
	now := time.Now()
	d.mu.Lock()
	for len(d.idle) > 0 {
		s = d.idle[len(d.idle)-1]
		d.idle[len(d.idle)-1] = nil
		d.idle = d.idle[:len(d.idle)-1]
		if now.Sub(s.since) <= directIdleTimeout {
			d.mu.Unlock()
			return s, true, nil
		}
		d.mu.Unlock()
		s.abort()
		d.mu.Lock()
	}
	d.mu.Unlock()
	st, err := d.open(ctx)
	if err != nil {
		return nil, false, err
	}
	s = &directStream{st: st}
	s.aborter = s.abort
	s.in = countedReader{r: st, left: -1}
	s.br = bufio.NewReaderSize(&s.in, directReadBuf)
	return s, false, nil
}

// dropIdle closes the idle streams.
func (d *directTransport) dropIdle() {
	d.mu.Lock()
	idle := d.idle
	d.idle = nil
	d.mu.Unlock()
	for _, s := range idle {
		s.abort()
	}
}

// close closes the idle streams and keeps none from then on.
func (d *directTransport) close() {
	d.mu.Lock()
	d.closed = true
	if d.sweep != nil {
		d.sweep.Stop()
	}
	d.mu.Unlock()
	d.dropIdle()
}
