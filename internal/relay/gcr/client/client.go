// Package client plays the relay client's role of the Cloud Robotics
// http-relay protocol, as the original http-relay-client does: it
// long-polls a relay server for requests, performs them against a local
// backend, and posts the responses back in chunks, with keep-alive empty
// chunks, the request stream of upgraded connections, 408 handling and
// giving up on a request when the server answers 400. Tests use it to
// drive the relay front door exactly as the original client would, and the
// load harness uses it, tuned, as an efficient relay client.
package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/internal/relay/gcr/wire"
)

// Defaults of the original relay client.
const (
	DefaultNumPendingRequests = 1
	DefaultMaxChunkSize       = 50 * 1024
	DefaultBlockSize          = 10 * 1024
	// DefaultChunkDelay is the original's backend response timeout: data
	// is posted when it has waited this long.
	DefaultChunkDelay = 100 * time.Millisecond
	// DefaultKeepAliveTicks: after this many chunk delays without data an
	// empty chunk is posted (about 3 s).
	DefaultKeepAliveTicks = 30
)

// ErrForbidden is returned by Run when the relay server answers 403; the
// original client exits then.
var ErrForbidden = errors.New("relay server answered 403 Forbidden")

// Options configures a Client.
type Options struct {
	// RelayURL is the relay server's base URL, with any prefix.
	RelayURL string
	// ServerName is the backend name to serve.
	ServerName string
	// BackendURL is where requests are performed ("http://127.0.0.1:9000").
	BackendURL string
	// Token, when set, is sent as "Authorization: Bearer <token>" on every
	// relay call.
	Token string
	// NumPendingRequests is the number of concurrent polls.
	NumPendingRequests int
	// MaxChunkSize: a chunk is posted as soon as it holds more than this.
	MaxChunkSize int
	// BlockSize is the read size from the backend.
	BlockSize int
	// ChunkDelay: buffered data is posted after this long.
	ChunkDelay time.Duration
	// KeepAliveTicks: an empty chunk after this many idle chunk delays.
	KeepAliveTicks int
	// Relay and Backend are the HTTP clients to use; nil: own ones.
	Relay   *http.Client
	Backend *http.Client
	// Logger, when set, gets one line per request (method, host, path,
	// status, bytes, elapsed, client: the expose agent's line) and the
	// connection's ups and downs. Nil: silent, as the original at its
	// default level.
	Logger *slog.Logger
	// Backoff, when set, makes each poller's pacing of reconnections: it
	// replaces the original's fixed one-second pause after a failed poll,
	// and while the server is unreachable the client checks its /healthz
	// before polling again.
	Backoff func() Backoff
	// OnReady is called when the relay server is first reachable, and
	// again after every reconnection.
	OnReady func()
	// ChunkedPosts posts large chunks in chunked transfer encoding,
	// written to the connection straight from where they lie. The
	// original client declares a Content-Length, and then net/http copies
	// the body through a 32 KiB buffer into writes of that size.
	ChunkedPosts bool
}

// Client is a relay client.
type Client struct {
	o        Options
	relay    *http.Client
	backend  *http.Client
	own      []*http.Transport
	backURL  *url.URL
	relayURL *url.URL
	wg       sync.WaitGroup

	chunkBufs sync.Pool
	work      chan *wire.Request // requests for idle handlers

	connMu sync.Mutex
	down   bool   // a poll failed and no poll or health check succeeded since
	downs  uint64 // failures so far: an answer to a call sent before the last one proves nothing
}

// New returns a client; Run starts it.
func New(o Options) (*Client, error) {
	if o.NumPendingRequests <= 0 {
		o.NumPendingRequests = DefaultNumPendingRequests
	}
	if o.MaxChunkSize <= 0 {
		o.MaxChunkSize = DefaultMaxChunkSize
	}
	if o.BlockSize <= 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.ChunkDelay <= 0 {
		o.ChunkDelay = DefaultChunkDelay
	}
	if o.KeepAliveTicks <= 0 {
		o.KeepAliveTicks = DefaultKeepAliveTicks
	}
	bu, err := url.Parse(o.BackendURL)
	if err != nil {
		return nil, fmt.Errorf("backend url: %w", err)
	}
	ru, err := url.Parse(o.RelayURL)
	if err != nil || ru.Host == "" {
		return nil, fmt.Errorf("relay url %q: not an absolute URL", o.RelayURL)
	}
	c := &Client{o: o, relay: o.Relay, backend: o.Backend, backURL: bu, relayURL: ru, work: make(chan *wire.Request)}
	if c.relay == nil {
		tr := &http.Transport{MaxIdleConnsPerHost: 100, DisableCompression: true}
		c.own = append(c.own, tr)
		c.relay = &http.Client{Transport: tr}
	}
	if c.backend == nil {
		tr := &http.Transport{MaxIdleConnsPerHost: 100, DisableCompression: true}
		c.own = append(c.own, tr)
		c.backend = &http.Client{Transport: tr}
	}
	// Redirects pass through the relay untouched.
	b := *c.backend
	b.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c.backend = &b
	return c, nil
}

// Run polls until ctx ends or the server answers 403, and waits for the
// requests in progress to end.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.o.Backoff != nil {
		// Wait for the server before polling, so that "ready" means it.
		c.markDown(nil)
		if err := c.awaitServer(ctx, c.newBackoff()); err != nil {
			return nil
		}
	}
	errc := make(chan error, c.o.NumPendingRequests)
	var workers sync.WaitGroup
	for range c.o.NumPendingRequests {
		workers.Go(func() {
			if err := c.worker(ctx); err != nil {
				errc <- err
				cancel()
			}
		})
	}
	workers.Wait()
	c.wg.Wait()
	for _, tr := range c.own {
		tr.CloseIdleConnections()
	}
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func (c *Client) relayRequest(ctx context.Context, method, path, rawQuery, ctype string, body []byte) (*http.Request, error) {
	u := *c.relayURL
	u.Path += path
	u.RawQuery = rawQuery
	var rd io.Reader = http.NoBody
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "", rd)
	if err != nil {
		return nil, err
	}
	req.URL, req.Host = &u, u.Host
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.o.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.o.Token)
	}
	return req, nil
}

func (c *Client) worker(ctx context.Context) error {
	q := url.Values{"server": {c.o.ServerName}}.Encode()
	bo := c.newBackoff()
	failed := func(err error) {
		if ctx.Err() != nil {
			return
		}
		if bo == nil {
			c.pause(ctx)
			return
		}
		c.markDown(err)
		if !bo.Wait(ctx) {
			return
		}
		if c.isDown() {
			c.awaitServer(ctx, bo)
		}
	}
	for ctx.Err() == nil {
		req, err := c.relayRequest(ctx, "GET", "/server/request", q, "", nil)
		if err != nil {
			return err
		}
		sent := c.failures()
		resp, err := c.relay.Do(req)
		if err != nil {
			failed(err)
			continue
		}
		body, err := readBody(resp)
		resp.Body.Close()
		switch {
		case err != nil:
			failed(err)
		case resp.StatusCode == http.StatusRequestTimeout:
			c.markUp(bo, sent)
		case resp.StatusCode == http.StatusForbidden:
			return ErrForbidden
		case resp.StatusCode != http.StatusOK:
			failed(fmt.Errorf("relay server answered %s", resp.Status))
		default:
			c.markUp(bo, sent)
			breq, err := wire.UnmarshalRequest(body)
			if err != nil {
				failed(fmt.Errorf("bad request message from the relay server: %w", err))
				continue
			}
			c.dispatch(ctx, breq)
		}
	}
	return nil
}

// Backoff paces reconnection attempts: Wait waits before the next one
// (false when ctx ended first), Reset starts over after a success.
type Backoff interface {
	Wait(ctx context.Context) bool
	Reset()
}

func (c *Client) newBackoff() Backoff {
	if c.o.Backoff == nil {
		return nil
	}
	return c.o.Backoff()
}

// markDown records a failure to reach the server; the first one after a
// success is logged. A nil err marks the start, before any contact.
func (c *Client) markDown(err error) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	c.downs++
	if c.down {
		return
	}
	c.down = true
	if err != nil && c.o.Logger != nil {
		c.o.Logger.Warn("relay: disconnected, reconnecting", "err", oneLine(err.Error()))
	}
}

// failures counts the failures so far, for markUp.
func (c *Client) failures() uint64 {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	return c.downs
}

func (c *Client) isDown() bool {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	return c.down
}

// markUp records that the server answered a call sent when failures()
// was sent; the first answer after a failure (or at start) is logged and
// reported to OnReady. An answer to a call sent before the last failure
// (a poll the server ended as it stopped) proves nothing.
func (c *Client) markUp(bo Backoff, sent uint64) {
	c.connMu.Lock()
	if c.downs != sent {
		c.connMu.Unlock()
		return
	}
	was := c.down
	c.down = false
	c.connMu.Unlock()
	if bo != nil {
		bo.Reset()
	}
	if !was {
		return
	}
	if c.o.Logger != nil {
		c.o.Logger.Info("relay: ready", "server", c.relayURL.String(), "name", c.o.ServerName, "backend", c.o.BackendURL)
	}
	if c.o.OnReady != nil {
		c.o.OnReady()
	}
}

// awaitServer checks the relay server's /healthz until it answers (any
// HTTP answer: the server is there), with backoff; it returns ctx's error
// when ctx ends first.
func (c *Client) awaitServer(ctx context.Context, bo Backoff) error {
	for {
		req, err := c.relayRequest(ctx, "GET", "/healthz", "", "", nil)
		if err != nil {
			return err
		}
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sent := c.failures()
		resp, err := c.relay.Do(req.WithContext(hctx))
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			cancel()
			c.markUp(bo, sent)
			return nil
		}
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.markDown(err)
		if !bo.Wait(ctx) {
			return ctx.Err()
		}
	}
}

func oneLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// handlerIdle is how long a handler waits for another request before it
// exits: a burst leaves no goroutines behind for longer.
const handlerIdle = 30 * time.Second

// dispatch hands a request to an idle handler, or starts one. A handler
// stays for the next requests (up to handlerIdle between two), so that
// requests do not each pay for a new goroutine and its stack growing
// through net/http.
func (c *Client) dispatch(ctx context.Context, breq *wire.Request) {
	select {
	case c.work <- breq:
		return
	default:
	}
	c.wg.Go(func() {
		idle := time.NewTimer(handlerIdle)
		defer idle.Stop()
		for {
			c.handle(ctx, breq)
			idle.Reset(handlerIdle)
			select {
			case breq = <-c.work:
			case <-idle.C:
				return
			case <-ctx.Done():
				return
			}
		}
	})
}

// readBody reads a response's body, into a buffer of its size when the
// length is declared.
func readBody(resp *http.Response) ([]byte, error) {
	if n := resp.ContentLength; n >= 0 && n <= 64<<20 {
		b := make([]byte, n)
		_, err := io.ReadFull(resp.Body, b)
		return b, err
	}
	return io.ReadAll(resp.Body)
}

// pause waits a second after an unexpected answer, as the original does.
func (c *Client) pause(ctx context.Context) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (c *Client) backendRequest(ctx context.Context, breq *wire.Request) (*http.Request, error) {
	u, err := url.Parse(breq.URL)
	if err != nil {
		return nil, err
	}
	u.Scheme, u.Host = c.backURL.Scheme, c.backURL.Host
	u.Path = c.backURL.Path + u.Path
	if u.RawPath != "" {
		u.RawPath = c.backURL.EscapedPath() + u.RawPath
	}
	// The URL is set parsed, not printed and parsed again.
	req, err := http.NewRequestWithContext(ctx, breq.Method, "", bytes.NewReader(breq.Body))
	if err != nil {
		return nil, err
	}
	req.URL, req.Host = u, u.Host
	if breq.Host != "" {
		req.Host = breq.Host
	}
	for _, h := range breq.Headers {
		req.Header.Add(h.Name, h.Value)
	}
	return req, nil
}

// handle serves one request, logging it when there is a Logger.
func (c *Client) handle(ctx context.Context, breq *wire.Request) {
	start := time.Now()
	status, n := c.serve(ctx, breq)
	if l := c.o.Logger; l != nil && l.Enabled(ctx, slog.LevelInfo) {
		path := breq.URL
		if u, err := url.Parse(breq.URL); err == nil {
			path = u.Path
		}
		client := ""
		for _, h := range breq.Headers {
			if http.CanonicalHeaderKey(h.Name) == "X-Forwarded-For" {
				client = h.Value
			}
		}
		l.LogAttrs(ctx, slog.LevelInfo, "request", slog.String("method", breq.Method), slog.String("host", breq.Host),
			slog.String("path", path), slog.Int("status", status), slog.Int64("bytes", n),
			slog.Duration("elapsed", time.Since(start).Round(time.Microsecond)), slog.String("client", client))
	}
}

// serve performs one request against the backend and posts its response;
// it returns the status and the body bytes relayed, for the log.
func (c *Client) serve(ctx context.Context, breq *wire.Request) (status int, n int64) {
	id := breq.ID
	req, err := c.backendRequest(ctx, breq)
	if err != nil {
		c.postError(ctx, id, fmt.Sprintf("Failed to create request for backend: %v", err))
		return http.StatusInternalServerError, 0
	}
	start := time.Now()
	hresp, err := c.backend.Do(req)
	if err != nil {
		c.postError(ctx, id, fmt.Sprintf("Backend request failed with error: %v", err))
		return http.StatusInternalServerError, 0
	}
	status = hresp.StatusCode
	first := &wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: int32(hresp.StatusCode), Headers: headers(hresp.Header)}
	if hresp.StatusCode == http.StatusSwitchingProtocols {
		w, ok := hresp.Body.(io.WriteCloser)
		if !ok {
			hresp.Body.Close()
			c.postError(ctx, id, "Backend returned 101 Switching Protocols, which is not supported.")
			return http.StatusInternalServerError, 0
		}
		c.wg.Go(func() { c.streamToBackend(ctx, id, w) })
	}
	if cl := hresp.ContentLength; cl >= 0 && cl <= int64(c.o.MaxChunkSize) && hresp.StatusCode != http.StatusSwitchingProtocols {
		// A short body of known length: read it and post the whole
		// response as one message, without the streaming machinery.
		first.Body = make([]byte, hresp.ContentLength)
		_, err := io.ReadFull(hresp.Body, first.Body)
		hresp.Body.Close()
		if err != nil {
			c.postError(ctx, id, fmt.Sprintf("Failed to read backend response: %v", err))
			return http.StatusInternalServerError, 0
		}
		first.EOF = true
		first.Trailers = headers(hresp.Trailer)
		first.BackendDurationMs = time.Since(start).Milliseconds()
		c.post(ctx, first)
		return status, int64(len(first.Body))
	}
	chunks := make(chan outChunk)
	st := &streamer{c: c, out: chunks, resp: first, buf: c.chunkBuffer(), stop: make(chan struct{})}
	go st.read(hresp.Body)
	go st.tick()
	failed := false
	for ch := range chunks {
		if failed || ch.resp == nil {
			if !failed && ch.release != nil {
				c.putChunkBuffer(ch.release)
			}
			continue // drain, so the streamer ends
		}
		if ch.resp.EOF {
			// The backend's trailers are known once its body is read.
			ch.resp.Trailers = append(ch.resp.Trailers, headers(hresp.Trailer)...)
			ch.resp.BackendDurationMs = time.Since(start).Milliseconds()
		}
		n += int64(len(ch.resp.Body))
		if err := c.post(ctx, ch.resp); err != nil {
			// A missing chunk would corrupt the response: stop, and close
			// the backend connection.
			failed = true
			hresp.Body.Close()
		}
		if !failed && ch.release != nil {
			// The server read it all before answering, and the chunks
			// before it: the buffer is free.
			c.putChunkBuffer(ch.release)
		}
	}
	return status, n
}

// outChunk is a chunk to post, and the buffer that is free once it is
// posted (its body is the last part of that buffer to go). A chunk
// without a response only gives its buffer back.
type outChunk struct {
	resp    *wire.Response
	release []byte
}

// streamer cuts a streamed backend body into chunks as the original does:
// a chunk as soon as it holds more than MaxChunkSize, buffered data after
// a chunk delay, and an empty chunk after KeepAliveTicks idle delays. The
// body is read straight into chunk buffers, BlockSize at a time, and a
// chunk's body is the part of a buffer read since the previous chunk: the
// bytes are not copied on their way from the backend to the post. The
// reader (read) and the clock (tick) share the state under mu and send
// chunks, in order, while holding it.
type streamer struct {
	c    *Client
	out  chan<- outChunk
	stop chan struct{} // closed when the body ended

	mu    sync.Mutex
	resp  *wire.Response // the chunk being built; its body is buf[start:end]
	buf   []byte         // the buffer being read into (full capacity); nil: none yet
	start int
	end   int
	ticks int
	done  bool
}

// emitLocked sends the chunk built so far and starts the next one.
// release says that the chunk's buffer is done with: it is given back
// once the chunk is posted.
func (s *streamer) emitLocked(eof, release bool) {
	r := s.resp
	r.Body = []byte{}
	if s.buf != nil {
		r.Body = s.buf[s.start:s.end:s.end]
	}
	r.EOF = eof
	ch := outChunk{resp: r}
	if release {
		ch.release = s.buf
		s.buf = nil
	}
	s.out <- ch
	s.resp = &wire.Response{HasID: true, ID: r.ID}
	s.start = s.end
	s.ticks = 0
}

// read reads the backend's body until it ends (an error ends it too, as
// in the original) and sends the last chunk.
func (s *streamer) read(in io.ReadCloser) {
	defer in.Close()
	block := s.c.o.BlockSize
	for {
		s.mu.Lock()
		if s.buf == nil || cap(s.buf)-s.end < block {
			if s.buf != nil {
				// No room for another block: the buffer goes back once
				// its last chunk (possibly empty: only the buffer) is posted.
				if s.end > s.start {
					s.emitLocked(false, true)
				} else {
					s.out <- outChunk{release: s.buf}
				}
			}
			s.buf = s.c.chunkBuffer()
			s.start, s.end = 0, 0
		}
		dst := s.buf[s.end : s.end+block]
		s.mu.Unlock()
		n, err := in.Read(dst)
		s.mu.Lock()
		s.end += n
		if err != nil {
			s.emitLocked(true, true)
			s.done = true
			s.mu.Unlock()
			close(s.stop)
			close(s.out)
			return
		}
		if s.end-s.start > s.c.o.MaxChunkSize {
			s.emitLocked(false, cap(s.buf)-s.end < block)
		}
		s.mu.Unlock()
	}
}

// tick sends what was read after each chunk delay, and an empty chunk
// after KeepAliveTicks idle ones.
func (s *streamer) tick() {
	timer := time.NewTimer(s.c.o.ChunkDelay)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-s.stop:
			return
		}
		timer.Reset(s.c.o.ChunkDelay)
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			return
		}
		s.ticks++
		if s.end > s.start || s.resp.HasStatus || s.ticks > s.c.o.KeepAliveTicks {
			s.emitLocked(false, false)
		}
		s.mu.Unlock()
	}
}

// chunkBuffer returns a buffer of full capacity (len 0) for a chunk and
// the block read after it crosses MaxChunkSize.
func (c *Client) chunkBuffer() []byte {
	if b, ok := c.chunkBufs.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, c.o.MaxChunkSize+c.o.BlockSize)
}

func (c *Client) putChunkBuffer(b []byte) {
	if cap(b) >= c.o.MaxChunkSize+c.o.BlockSize {
		c.chunkBufs.Put(&b)
	}
}

// errPermanent is a 400 from /server/response: the request is over.
var errPermanent = errors.New("relay server refused the response chunk")

// post sends one chunk, retrying transient failures a few times. The
// body is sent from where it lies, not copied into the message.
func (c *Client) post(ctx context.Context, r *wire.Response) error {
	head, payload, tail := r.MarshalParts()
	var last error
	for attempt := range 4 {
		if attempt > 0 {
			t := time.NewTimer(time.Duration(attempt) * 100 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		req, err := c.relayRequest(ctx, "POST", "/server/response", "", wire.ResponseContentType, nil)
		if err != nil {
			return err
		}
		switch {
		case len(payload) > 64<<10 && c.o.ChunkedPosts:
			// A body that is an io.WriterTo is written by net/http with
			// WriteTo: each part in one write of the chunked encoding.
			req.Body = io.NopCloser(&net.Buffers{head, payload, tail})
			req.ContentLength = -1
		case len(payload) > 64<<10:
			req.Body = io.NopCloser(io.MultiReader(bytes.NewReader(head), bytes.NewReader(payload), bytes.NewReader(tail)))
			req.ContentLength = int64(len(head) + len(payload) + len(tail))
		default:
			// Small: one copy, and the transport writes headers and body
			// in one go (it flushes headers first for other readers).
			msg := slices.Concat(head, payload, tail)
			req.Body = io.NopCloser(bytes.NewReader(msg))
			req.ContentLength = int64(len(msg))
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(msg)), nil }
		}
		resp, err := c.relay.Do(req)
		if err != nil {
			last = err
			if ctx.Err() != nil {
				return err
			}
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			return nil
		case http.StatusBadRequest:
			return errPermanent
		}
		last = fmt.Errorf("relay server answered %s", resp.Status)
	}
	return last
}

func (c *Client) postError(ctx context.Context, id, msg string) {
	c.post(ctx, &wire.Response{
		HasID: true, ID: id, HasStatus: true, StatusCode: http.StatusInternalServerError,
		Headers: []wire.Header{{Name: "Content-Type", Value: "text/plain"}},
		Body:    []byte(msg), EOF: true,
	})
}

// streamToBackend copies the user's bytes of an upgraded connection from
// /server/requeststream to the backend until the server answers 410.
func (c *Client) streamToBackend(ctx context.Context, id string, w io.WriteCloser) {
	defer w.Close()
	q := url.Values{"id": {id}}.Encode()
	for {
		// A POST with an empty body, as the original, to avoid caching.
		req, err := c.relayRequest(ctx, "POST", "/server/requeststream", q, "text/plain", nil)
		if err != nil {
			return
		}
		resp, err := c.relay.Do(req)
		if err != nil {
			return
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return
		}
		_, err = io.Copy(w, resp.Body)
		resp.Body.Close()
		if err != nil {
			return
		}
	}
}

func headers(h http.Header) []wire.Header {
	var out []wire.Header
	for k, vs := range h {
		for _, v := range vs {
			out = append(out, wire.Header{Name: k, Value: v})
		}
	}
	return out
}
