package gcr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/gcr/wire"
)

// backend is one name's relay clients, seen from this node: user
// requests wait in its queue and every poll for the name takes from it,
// so the relay clients of a name share its requests. It is the relay
// core's RoundTripper for that name.
//
// A request waits in the queue without its goroutine being woken when a
// poll takes it: the user side waits for the request's first chunk from
// the start (and for the pickup timeout, after which it leaves the queue
// if it is still there), and the poll that takes it writes it out.
type backend struct {
	g    *Relay
	name string
	reg  *relay.Registration
	// queued has a token when requests may wait in queue: a poll that
	// finds the queue empty waits for one. Capacity 1: a poll that takes
	// requests and leaves some behind passes the token on.
	queued chan struct{}

	// Guarded by g.mu.
	queue    []*pending // requests waiting for a poll, oldest first
	parked   int        // polls waiting for the queued token (see take)
	polls    int
	lastPoll time.Time
	idle     *time.Timer
}

// chunk is one posted HttpResponse and the buffer its body lies in, which
// the user side returns to the pool once it has relayed the body.
type chunk struct {
	msg    *wire.Response
	buf    []byte
	stream *bodyStream // a body relayed as it arrives (msg.Body is empty)
}

// Ready reports whether a poll is parked for the name on this node, so the
// relay core sends the request to another node that may have one when
// none is.
func (b *backend) Ready() bool {
	b.g.mu.Lock()
	defer b.g.mu.Unlock()
	return b.polls > 0
}

var _ relay.Readier = (*backend)(nil)

// pending is one relayed request, from the user's request to the end of
// its response.
type pending struct {
	g    *Relay
	id   string
	name string
	msg  []byte // the serialized HttpRequest

	// chunks hands each posted HttpResponse to the user side. It holds
	// one: /server/response answers ok once the chunk is queued behind
	// the one the user side is writing, so the relay client posts the next
	// chunk while the user side still writes (the transfers overlap, and a
	// late answer does not leave the user side idle); a slow user slows
	// the relay client down instead of filling memory (one message
	// queued per request at most).
	chunks chan chunk
	// up carries the user's bytes after a 101 to /server/requeststream.
	up chan []byte
	// userGone is closed when the user goes away (or the hub cancels
	// the relay): every wait of the user side and of a streamed post
	// watches it, and ends the request (errUserGone).
	userGone <-chan struct{}
	// queued: the request is in its backend's queue (guarded by g.mu).
	queued bool

	done chan struct{}
	once sync.Once
	err  error // why it ended; read after done is closed
	// The inactivity timer fires InactiveRequestTimeout after it was
	// armed and reaps the request unless there was activity since, in
	// which case it is armed again for the time left: touch is a store,
	// not a timer reset, so activity costs next to nothing.
	timer *time.Timer
	last  atomic.Int64 // time of the last activity, in ns since clock0
	// upgraded: the response is a 101; its chunks are read whole.
	upgraded atomic.Bool
	// userDone: the user has finished sending on an upgraded connection
	// (its end of the stream, or a half-close). The request lives on
	// until the backend's end, as in the original.
	userDone atomic.Bool
}

// clock0 is the origin of pending.last: monotonic times as integers.
var clock0 = time.Now()

func since0() int64 { return int64(time.Since(clock0)) }

// newPending registers a relayed request. Only a request asking for an
// upgrade gets the channel of the user's bytes after a 101.
func (g *Relay) newPending(ctx context.Context, name string, msg []byte, id string, upgrade bool) (*pending, error) {
	p := &pending{
		g: g, id: id, name: name, msg: msg,
		chunks:   make(chan chunk, 1),
		done:     make(chan struct{}),
		userGone: ctx.Done(),
	}
	if upgrade {
		p.up = make(chan []byte, 4)
	}
	g.mu.Lock()
	if g.closing {
		g.mu.Unlock()
		return nil, relay.ErrShuttingDown
	}
	g.pending[id] = p
	p.last.Store(since0())
	// Armed only once assigned (under g.mu, which p.reap takes), so that
	// even a tiny timeout cannot fire before p.timer is set.
	p.timer = time.AfterFunc(g.opts.InactiveRequestTimeout, p.reap)
	g.mu.Unlock()
	return p, nil
}

// gone ends the request because the user went away (the waits that see
// userGone call it): the relay client's next post for it gets 400. It
// returns the error the user side sees.
func (p *pending) gone() error {
	p.finish(errUserGone)
	return p.endErr()
}

// finish ends the request for reason err (nil: the response is complete).
func (p *pending) finish(err error) {
	p.once.Do(func() {
		p.err = err
		// Unlisted before done closes: once the user has its answer (a
		// 504, say), the relay client's next post for the id gets 400.
		p.g.mu.Lock()
		if p.g.pending[p.id] == p {
			delete(p.g.pending, p.id)
		}
		p.g.mu.Unlock()
		p.timer.Stop()
		close(p.done)
	})
}

// touch records activity: the request is reaped only after a full
// inactivity timeout without any.
func (p *pending) touch() { p.last.Store(since0()) }

// touchChunk records a response chunk as activity, unless it is an empty
// one (the relay client's keep-alive) after the user finished sending on
// an upgraded connection: then only the backend's bytes hold the request
// open, so that a user gone for good and a backend that stays silent do
// not hold it for ever (the original did).
func (p *pending) touchChunk(m *wire.Response) {
	if len(m.Body) > 0 || !p.userDone.Load() {
		p.touch()
	}
}

// reap runs when the inactivity timer fires: it ends the request if it
// was inactive for the whole timeout, else waits for the rest of it.
func (p *pending) reap() {
	p.g.mu.Lock() // p.timer is set
	p.g.mu.Unlock()
	idle := time.Duration(since0() - p.last.Load())
	if left := p.g.opts.InactiveRequestTimeout - idle; left > 0 {
		select {
		case <-p.done:
		default:
			p.timer.Reset(left)
		}
		return
	}
	p.finish(errReaped)
}

// endErr is the error a reader of the ended request sees.
func (p *pending) endErr() error {
	switch p.err {
	case nil:
		return io.EOF
	case errReaped:
		return fmt.Errorf("relay request %s: no activity for %v", p.id, p.g.opts.InactiveRequestTimeout)
	case errUserGone:
		return context.Canceled
	}
	return p.err
}

// RoundTrip hands the request to a relay client and returns its response,
// whose body streams in as the relay client posts chunks.
func (b *backend) RoundTrip(req *http.Request) (*http.Response, error) {
	p, err := b.request(req)
	if err != nil {
		return nil, err
	}
	fc, err := b.handOff(p)
	if err != nil {
		return nil, err
	}
	return b.response(req, p, fc)
}

// request makes the pending request for the user's.
func (b *backend) request(req *http.Request) (*pending, error) {
	g := b.g
	var body []byte
	if req.Body != nil {
		var err error
		body, err = io.ReadAll(io.LimitReader(req.Body, g.opts.MaxRequestBodyBytes+1))
		if err != nil {
			return nil, err
		}
		if int64(len(body)) > g.opts.MaxRequestBodyBytes {
			return nil, httpapi.ErrRequestTooLarge
		}
	}
	id := newID(b.name)
	u := *req.URL
	u.Scheme, u.Host, u.User, u.Fragment = "http", "invalid", nil, ""
	msg := (&wire.Request{
		ID: id, Method: req.Method, URL: u.String(), Headers: requestHeaders(req.Header),
		Body: body, Host: req.Host,
	}).Marshal()
	return g.newPending(req.Context(), b.name, msg, id, req.Header.Get("Upgrade") != "")
}

// handOff queues a request for a poll and waits for its first chunk; a
// request no poll took within PickupTimeout leaves the queue.
func (b *backend) handOff(p *pending) (chunk, error) {
	g := b.g
	g.mu.Lock()
	p.queued = true
	b.queue = append(b.queue, p)
	g.changedLocked()
	g.mu.Unlock()
	select {
	case b.queued <- struct{}{}:
	default: // a token waits already
	}
	pickup := getTimer(g.opts.PickupTimeout)
	defer putTimer(pickup)
	for {
		select {
		case fc := <-p.chunks:
			return fc, nil
		case <-p.done:
			b.dequeue(p)
			return chunk{}, b.failure(p)
		case <-p.userGone:
			b.dequeue(p)
			p.gone()
			return chunk{}, b.failure(p)
		case <-pickup.C:
			if b.dequeue(p) {
				p.finish(errNotTaken)
				return chunk{}, notPickedUp(b.name)
			}
			// Taken: its first chunk is waited for as long as the
			// request stays active.
		}
	}
}

// dequeue takes p out of the queue if it is still there, and reports
// whether it was.
func (b *backend) dequeue(p *pending) bool {
	g := b.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if !p.queued {
		return false
	}
	p.queued = false
	if i := slices.Index(b.queue, p); i >= 0 {
		b.queue = slices.Delete(b.queue, i, i+1)
	}
	g.changedLocked()
	return true
}

// take takes up to n requests from the queue, at least the first and
// then as long as the messages stay within maxBytes; requests that ended
// while they waited are dropped. It returns nil when none waits. A poll
// takes them in the order the polls were parked (the original's, where
// the first poll parked got the next request): one that has just come
// (parked false) takes nothing while others are parked; one that gets
// nothing is counted as parked until it takes something (parked true)
// or leaves.
func (b *backend) take(n, maxBytes int, parked bool) []*pending {
	g := b.g
	g.mu.Lock()
	if !parked && b.parked > 0 {
		b.parked++
		g.mu.Unlock()
		return nil
	}
	var out []*pending
	size, k := 0, 0
	for ; k < len(b.queue) && len(out) < n && (len(out) == 0 || size < maxBytes); k++ {
		p := b.queue[k]
		p.queued = false
		select {
		case <-p.done:
			continue
		default:
		}
		out = append(out, p)
		size += len(p.msg)
	}
	rest := copy(b.queue, b.queue[k:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	if k > 0 {
		g.changedLocked()
	}
	switch {
	case len(out) > 0 && parked:
		b.parked--
	case len(out) == 0 && !parked:
		b.parked++
	}
	g.mu.Unlock()
	if rest > 0 {
		// More wait: another poll takes them.
		select {
		case b.queued <- struct{}{}:
		default:
		}
	}
	return out
}

// response is the user's response, from the first chunk on.
func (b *backend) response(req *http.Request, p *pending, fc chunk) (*http.Response, error) {
	first := fc.msg
	if !first.HasStatus {
		putMessage(fc.buf)
		p.finish(errNoHeader)
		return nil, errNoHeader
	}
	status := int(first.StatusCode)
	if status != http.StatusSwitchingProtocols && (status < 200 || status > 999) {
		putMessage(fc.buf)
		p.finish(errClosed)
		return nil, httpapi.Errorf(http.StatusBadGateway, "relay client sent status code %d", status)
	}
	// The response and its body in one allocation.
	both := &struct {
		resp http.Response
		rd   bodyReader
	}{}
	// The buffers of an upgraded stream are not pooled: its Close may
	// come from another goroutine while a Read copies from one.
	rd := &both.rd
	rd.p, rd.pooled = p, status != http.StatusSwitchingProtocols
	// The values share one array: one allocation for all of them, where
	// Header.Add makes one per name.
	h := make(http.Header, len(first.Headers))
	vals := make([]string, 0, len(first.Headers))
	for _, hd := range first.Headers {
		if validHeader(hd) {
			k := http.CanonicalHeaderKey(hd.Name)
			if vs, ok := h[k]; ok {
				h[k] = append(vs, hd.Value) // beyond its capacity: copied
			} else {
				vals = append(vals, hd.Value)
				h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
			}
			if strings.HasPrefix(k, "Grpc-") {
				rd.grpc = append(rd.grpc, hd)
			}
		}
	}
	resp := &both.resp
	*resp = http.Response{
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: -1,
		Request:       req,
	}
	if status == http.StatusSwitchingProtocols {
		p.upgraded.Store(true)
	}
	if first.EOF && status != http.StatusSwitchingProtocols {
		// The whole response came in one message (a short answer, or a
		// body streamed after its fields): its length is known, and the
		// user gets it as from the backend.
		resp.ContentLength = int64(len(first.Body))
		if fc.stream != nil {
			resp.ContentLength = int64(fc.stream.n)
		}
	}
	rd.resp = resp
	rd.absorb(fc)
	if first.EOF && fc.stream == nil && status != http.StatusSwitchingProtocols && len(resp.Trailer) == 0 && len(rd.grpc) == 0 {
		// The whole response is here, trailers included: say its length
		// to the user (net/http would send a long one chunked). A
		// streamed body's trailers follow it, so its length is said only
		// by the relay client's Content-Length, if it sent one.
		if _, ok := h["Content-Length"]; !ok && req.Method != http.MethodHead && status != http.StatusNoContent && status != http.StatusNotModified {
			h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
		}
	}
	if status == http.StatusSwitchingProtocols {
		resp.Body = &upgradeBody{bodyReader: rd}
	} else {
		resp.Body = rd
	}
	return resp, nil
}

// failure is the error for a request that ended before its first chunk.
func (b *backend) failure(p *pending) error {
	switch p.err {
	case errReaped:
		return httpapi.Errorf(http.StatusGatewayTimeout, "Timeout after %v, indicating that the backend request took too long", b.g.opts.InactiveRequestTimeout)
	case errLost:
		return errLost
	case errUserGone:
		return context.Canceled
	}
	return p.endErr()
}

// requestHeaders lists the request's headers for the relay client, one
// entry per value, in a stable order. The empty User-Agent the reverse
// proxy adds (to keep Go's own out) is left out.
func requestHeaders(h http.Header) []wire.Header {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]wire.Header, 0, len(h))
	for _, k := range keys {
		for _, v := range h[k] {
			if k == "User-Agent" && v == "" {
				continue
			}
			out = append(out, wire.Header{Name: k, Value: v})
		}
	}
	return out
}

// validHeader reports whether a header from the relay client can be sent:
// a token name and a value without line breaks or NUL.
func validHeader(h wire.Header) bool {
	if h.Name == "" {
		return false
	}
	for i := 0; i < len(h.Name); i++ {
		c := h.Name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return !strings.ContainsAny(h.Value, "\r\n\x00")
}

// bodyReader is a relayed response's body: the chunks the relay client
// posts, read as they come.
type bodyReader struct {
	p       *pending
	buf     []byte // what is left of the current chunk's body
	backing []byte // the current chunk's pooled buffer
	pooled  bool
	eof     bool
	resp    *http.Response // its Trailer is made with the first trailer
	grpc    []wire.Header  // Grpc-* headers, sent again as trailers
	stream  *bodyStream    // a body being relayed as it arrives
}

// release gives the current chunk's buffer back.
func (r *bodyReader) release() {
	if r.pooled && r.backing != nil {
		putMessage(r.backing)
	}
	r.backing, r.buf = nil, nil
}

// absorb takes in one chunk: its body, its trailers, and the end.
func (r *bodyReader) absorb(ch chunk) {
	r.release()
	c := ch.msg
	r.buf, r.backing = c.Body, ch.buf
	if ch.stream != nil {
		// The body follows, then the fields after it, which hold the
		// end (endStream).
		r.stream, r.buf = ch.stream, nil
	}
	// A chunk's trailers replace earlier ones of the same name: the relay
	// client repeats them on every chunk (and retry) once it knows them.
	var seen map[string][]string
	for _, t := range c.Trailers {
		if !validHeader(t) {
			continue
		}
		if seen == nil {
			seen = map[string][]string{}
		}
		k := http.CanonicalHeaderKey(t.Name)
		if !slices.Contains(seen[k], t.Value) {
			seen[k] = append(seen[k], t.Value)
		}
	}
	for k, vs := range seen {
		r.trailer()[k] = vs
	}
	if c.EOF && ch.stream == nil {
		r.eof = true
		for _, h := range r.grpc {
			k := http.CanonicalHeaderKey(h.Name)
			if _, ok := seen[k]; !ok {
				r.trailer().Add(k, h.Value)
			}
		}
		r.p.finish(nil)
	}
}

// trailer returns the response's Trailer, made on first use: most
// responses have none.
func (r *bodyReader) trailer() http.Header {
	if r.resp.Trailer == nil {
		r.resp.Trailer = http.Header{}
	}
	return r.resp.Trailer
}

func (r *bodyReader) Read(b []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.stream != nil {
			n, err := r.readStream(b)
			switch {
			case err == io.EOF:
				if err := r.endStream(); err != nil {
					return 0, err
				}
			case err != nil:
				r.stream.done(err, false)
				return n, err
			case n > 0:
				return n, nil
			}
			continue
		}
		if r.eof {
			r.release()
			return 0, io.EOF
		}
		select {
		case c := <-r.p.chunks:
			r.p.touchChunk(c.msg)
			r.absorb(c)
		case <-r.p.done:
			return 0, r.p.endErr()
		case <-r.p.userGone:
			return 0, r.p.gone()
		}
	}
	n := copy(b, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// WriteTo writes the body to w as the chunks come, each chunk's body in
// one write straight from the buffer its message was read into, and
// flushes w (when it can) whenever the next chunk is not there yet: a
// stream reaches the user as it comes, a response that is all there
// leaves in one go. The relay core uses it to write the body to the user
// without copying it through the proxy's buffer.
func (r *bodyReader) WriteTo(w io.Writer) (int64, error) {
	f, _ := w.(interface{ Flush() error })
	var n int64
	for {
		if r.stream != nil {
			k, user, err := r.copyStream(w, f)
			n += k
			if err != nil {
				r.stream.done(err, user)
				return n, err
			}
			if err := r.endStream(); err != nil {
				return n, err
			}
			continue
		}
		if len(r.buf) > 0 {
			k, err := w.Write(r.buf)
			n += int64(k)
			r.buf = r.buf[k:]
			if err != nil {
				return n, err
			}
		}
		if r.eof {
			r.release()
			return n, nil
		}
		select {
		case c := <-r.p.chunks:
			r.p.touchChunk(c.msg)
			r.absorb(c)
			continue
		case <-r.p.done:
			return n, r.p.endErr()
		case <-r.p.userGone:
			return n, r.p.gone()
		default:
		}
		if f != nil {
			if err := f.Flush(); err != nil {
				return n, err
			}
		}
		select {
		case c := <-r.p.chunks:
			r.p.touchChunk(c.msg)
			r.absorb(c)
		case <-r.p.done:
			return n, r.p.endErr()
		case <-r.p.userGone:
			return n, r.p.gone()
		}
	}
}

func (r *bodyReader) Close() error {
	if r.stream != nil {
		r.stream.done(errClosed, true)
	}
	r.p.finish(errClosed)
	if r.pooled {
		r.release()
	}
	return nil
}

// upgradeBody is the body of a 101 answer: the user's bytes written to it
// go to the relay client through /server/requeststream, in blocks.
type upgradeBody struct {
	*bodyReader
}

// CloseWrite is the end of the user's bytes (the user closed or shut down
// its sending side). The reverse proxy calls it instead of closing the
// whole stream, and keeps relaying the backend's bytes to the user until
// the relay client posts the end, as the original did: the user's last
// bytes (a websocket close frame) still reach the backend through
// /server/requeststream, the backend answers and ends, and the relay
// client's last post is answered ok. Without it the request ended with
// the user's end: the relay client's request-stream call got 410, so it
// closed the backend connection under its own reader, and its last post
// got 400.
func (u *upgradeBody) CloseWrite() error {
	u.p.userDone.Store(true)
	return nil
}

var errStreamClosed = errors.New("relay stream closed")

func (u *upgradeBody) Write(b []byte) (int, error) {
	p := u.p
	if p.up == nil {
		return 0, errStreamClosed
	}
	n := 0
	for len(b) > 0 {
		k := min(len(b), p.g.opts.BlockSize)
		block := append([]byte(nil), b[:k]...)
		select {
		case p.up <- block:
		case <-p.done:
			return n, errStreamClosed
		}
		n += k
		b = b[k:]
	}
	return n, nil
}

// Timers of the waits every relayed request and poll makes, reused: a
// stopped timer's channel holds no stale value (Go 1.23 timers), so a
// timer can go back to the pool once stopped.
var timers sync.Pool

func getTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func putTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}
