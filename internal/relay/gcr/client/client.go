// Package client plays the relay client's role of the Cloud Robotics
// http-relay protocol, as the original http-relay-client does: it
// long-polls a relay server for requests, performs them against a local
// backend, and posts the responses back in chunks, with keep-alive empty
// chunks, the request stream of upgraded connections, 408 handling and
// giving up on a request when the server answers 400. With its zero
// Options it behaves as the original on the wire (tests use it so to drive
// the relay front door exactly as the original client would); `postern
// relay` runs it tuned for speed on the same protocol (see Tuned): polls
// that follow the load, chunks posted as soon as the previous one is
// answered, large chunks written from where they were read.
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	// MaxPendingRequests, when above NumPendingRequests, makes the polls
	// follow the load: NumPendingRequests polls stay parked when idle, and
	// while requests are in progress as many polls as requests are kept
	// parked (the next requests of busy users find a poll waiting), up to
	// MaxPendingRequests. A poll the server leaves unanswered for its poll
	// timeout (408) ends when more polls are parked than needed. 0: the
	// original's fixed NumPendingRequests.
	MaxPendingRequests int
	// EagerChunks posts what was read from a streamed body as soon as the
	// previous chunk is answered, instead of waiting for the chunk delay
	// or MaxChunkSize: data never waits while the relay is idle, and
	// while a chunk is being posted the next one grows (up to
	// MaxChunkSize). The chunk delay still paces the first chunk of a
	// body that is slow to start (it carries the status and headers) and
	// the keep-alive chunks.
	EagerChunks bool
	// StreamBodies, when the server says it relays bodies as they come
	// (wire.StreamHeader on the poll's answer), sends large bodies in
	// messages whose id comes before the body (wire.AppendStreamHead): a
	// backend body of known length longer than MaxChunkSize goes in one
	// message, read from the backend as it is sent, and a large chunk of
	// a streamed body is relayed by the server without being held. The
	// messages are the protocol's; only their fields' order differs.
	StreamBodies bool
	// BatchRequests, above 1, asks the server for up to this many
	// requests per poll (wire.BatchHeader). A server that offers batches
	// (postern) answers with the requests waiting, in one answer, and
	// then takes the short complete responses of several requests in one
	// post: under load, two HTTP exchanges with the server serve many
	// requests instead of two each. Requests from batches are served
	// concurrently, up to MaxPendingRequests at once; the polls stay at
	// NumPendingRequests. A server that does not offer batches (the
	// original) answers one request per poll as always, and the client
	// works as without this setting.
	BatchRequests int
	// DirectBackend performs the requests against an http:// backend (when
	// Backend is nil) on connections of the client's own, each written
	// and read by the goroutine serving the request, instead of through
	// net/http's Transport and its two goroutines per connection. The
	// requests and their parsing are net/http's; upgrades still go
	// through the Transport.
	DirectBackend bool
	// DirectRelay does the same for the polls and posts to an http://
	// relay server reached without a proxy (when Relay is nil).
	DirectRelay bool
}

// relayPeekAfter is how long a connection to the relay server may stay
// idle and be used again without a peek (see directBackend.peekAfter).
const relayPeekAfter = time.Second

// backendRetryPeekAfter is how long a connection to the backend may stay
// idle and be used again without a peek for a request that is sent again
// if it was closed (see directBackend.retryPeekAfter): far below any
// backend's idle timeout, well above the gaps between requests under
// load, when the peek's system call counts.
const backendRetryPeekAfter = 50 * time.Millisecond

// Tuned settings of `postern relay`: see Tuned.
//
// One poll parked when idle: against a server that answers with batches
// (postern) the polls stay at that number, and one poll takes every
// request waiting when it is answered, so a second one parked beside it
// only split them into smaller answers: under load more polls, answers
// and wake-ups per request (0.22 polls per relayed request instead of
// 0.13; 10% more system calls per request in the server, 5% more in the
// relay client). A request that comes while the answer is on its way
// waits for the next poll, sent as soon as the answer is read. Against
// the original server the polls follow the load from there.
const (
	TunedNumPendingRequests = 1
	TunedMaxPendingRequests = 64
	TunedMaxChunkSize       = 1 << 20
	TunedBlockSize          = 1 << 20
	TunedBatchRequests      = 32
)

// Tuned returns o with the settings of a relay client built for speed on
// the same protocol, where o leaves them unset: adaptive polls
// (TunedNumPendingRequests to TunedMaxPendingRequests), eager chunks of
// up to TunedMaxChunkSize read TunedBlockSize at a time, posted in
// chunked encoding without copying. They work against any server of the
// protocol, the original's included.
func Tuned(o Options) Options {
	if o.NumPendingRequests <= 0 {
		o.NumPendingRequests = TunedNumPendingRequests
	}
	if o.MaxPendingRequests <= 0 {
		o.MaxPendingRequests = max(TunedMaxPendingRequests, o.NumPendingRequests)
	}
	if o.MaxChunkSize <= 0 {
		o.MaxChunkSize = TunedMaxChunkSize
	}
	if o.BlockSize <= 0 {
		o.BlockSize = TunedBlockSize
	}
	if o.BatchRequests <= 0 {
		o.BatchRequests = TunedBatchRequests
	}
	o.ChunkedPosts = true
	o.EagerChunks = true
	o.StreamBodies = true
	o.DirectBackend = true
	o.DirectRelay = true
	return o
}

// Client is a relay client.
type Client struct {
	o Options
	// relayDo and backendDo send a request to the relay server and to
	// the backend.
	relayDo, backendDo func(*http.Request) (*http.Response, error)
	own                []*http.Transport
	direct             *directBackend // with DirectBackend
	directRelay        *directBackend // with DirectRelay
	backURL            *url.URL
	relayURL           *url.URL
	// Templates of the relay calls, their URLs and headers shared by
	// every request (net/http only reads them).
	pollTmpl, postTmpl, batchTmpl *http.Request
	// Workers serve the requests of batches: workers counts them (up to
	// MaxPendingRequests), work hands them requests (see dispatch).
	workers chan struct{}
	work    chan job
	// batches: the server offers them (it answered a poll with one).
	batches atomic.Bool
	// Complete responses waiting to be posted in a batch (each after
	// its length, as the batch goes), the buffer of the previous batch
	// for the next one, and the posts of batches in progress; batchRoom
	// (on batchMu) is signalled when a batch leaves.
	batchMu      sync.Mutex
	batchRoom    sync.Cond
	batchBuf     []byte
	batchSpare   []byte
	batchPosting int

	wg        sync.WaitGroup // pollers and the goroutines of requests
	workerWG  sync.WaitGroup // workers (see dispatch), which end with Run's context
	chunkBufs sync.Pool

	pollMu   sync.Mutex
	polling  int   // pollers polling (or about to)
	handling int   // pollers handling a request they got
	runErr   error // the first error that ends Run
	stop     context.CancelFunc

	connMu sync.Mutex
	down   bool   // a poll failed and no poll or health check succeeded since
	downs  uint64 // failures so far: an answer to a call sent before the last one proves nothing
}

// New returns a client; Run starts it.
func New(o Options) (*Client, error) {
	if o.NumPendingRequests <= 0 {
		o.NumPendingRequests = DefaultNumPendingRequests
	}
	if o.MaxPendingRequests < o.NumPendingRequests {
		o.MaxPendingRequests = o.NumPendingRequests
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
	c := &Client{o: o, backURL: bu, relayURL: ru}
	c.batchRoom.L = &c.batchMu
	// Every poll holds a connection to the server, and every request in
	// progress one to the backend and, while it posts, one more to the
	// server: keep that many open for reuse.
	idle := max(100, 2*o.MaxPendingRequests+16)
	// Our own clients are plain transports, called directly: no redirects
	// to follow, no cookies, no timeouts of the client's, so nothing of
	// what http.Client adds (a copy of every request's headers, for
	// redirects) is needed.
	if o.Relay != nil {
		c.relayDo = o.Relay.Do
	} else {
		tr := &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: idle, DisableCompression: true, IdleConnTimeout: 90 * time.Second}
		c.own = append(c.own, tr)
		c.relayDo = tr.RoundTrip
	}
	if o.Backend == nil {
		tr := &http.Transport{MaxIdleConnsPerHost: idle, DisableCompression: true, IdleConnTimeout: 90 * time.Second}
		c.own = append(c.own, tr)
		// A transport returns redirects as they are.
		c.backendDo = tr.RoundTrip
		if o.DirectBackend && bu.Scheme == "http" && bu.Host != "" {
			port := bu.Port()
			if port == "" {
				port = "80"
			}
			c.direct = newDirectBackend(net.JoinHostPort(bu.Hostname(), port), idle, tr.RoundTrip)
			c.direct.retryPeekAfter = backendRetryPeekAfter
			c.backendDo = c.direct.RoundTrip
		}
	} else {
		// Redirects pass through the relay untouched.
		b := *o.Backend
		b.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		c.backendDo = b.Do
	}
	c.pollTmpl = c.relayTemplate("GET", "/server/request", url.Values{"server": {o.ServerName}}.Encode(), "")
	c.postTmpl = c.relayTemplate("POST", "/server/response", "", wire.ResponseContentType)
	c.batchTmpl = c.relayTemplate("POST", "/server/response", "", wire.BatchContentType)
	if addr, ok := c.relayAddr(); ok && o.DirectRelay {
		c.directRelay = newDirectBackend(addr, idle, c.relayDo)
		c.directRelay.peekAfter = relayPeekAfter
		c.relayDo = c.directRelay.RoundTrip
	}
	if o.BatchRequests > 1 {
		c.pollTmpl.Header[wire.BatchHeader] = []string{strconv.Itoa(o.BatchRequests)}
		c.workers = make(chan struct{}, o.MaxPendingRequests)
		c.work = make(chan job)
	}
	return c, nil
}

// relayTemplate returns a relay call without context or body.
func (c *Client) relayTemplate(method, path, rawQuery, ctype string) *http.Request {
	u := *c.relayURL
	u.Path += path
	u.RawQuery = rawQuery
	h := http.Header{}
	if ctype != "" {
		h["Content-Type"] = []string{ctype}
	}
	if c.o.Token != "" {
		h["Authorization"] = []string{"Bearer " + c.o.Token}
	}
	return &http.Request{Method: method, URL: &u, Host: u.Host, Header: h, Body: http.NoBody,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
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
	c.pollMu.Lock()
	c.stop = cancel
	c.polling = c.o.NumPendingRequests
	c.pollMu.Unlock()
	for range c.o.NumPendingRequests {
		c.wg.Go(func() { c.poller(ctx) })
	}
	c.wg.Wait()
	// The pollers are gone: the workers end, and then what they started.
	cancel()
	c.workerWG.Wait()
	c.wg.Wait()
	for _, tr := range c.own {
		tr.CloseIdleConnections()
	}
	if c.direct != nil {
		c.direct.closeIdle()
	}
	if c.directRelay != nil {
		c.directRelay.closeIdle()
	}
	c.pollMu.Lock()
	defer c.pollMu.Unlock()
	return c.runErr
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

// wantPolls is how many polls should be parked: NumPendingRequests, or
// with adaptive polls one per request in progress, up to
// MaxPendingRequests. Called with pollMu held.
func (c *Client) wantPolls() int {
	return min(max(c.o.NumPendingRequests, c.handling), c.o.MaxPendingRequests)
}

// took moves a poller from polling to handling the request it got, and
// starts a poller in its place when fewer polls than wanted are left.
func (c *Client) took(ctx context.Context) {
	c.pollMu.Lock()
	c.polling--
	c.handling++
	spawn := c.polling < c.wantPolls()
	if spawn {
		c.polling++
	}
	c.pollMu.Unlock()
	if spawn {
		c.wg.Go(func() { c.poller(ctx) })
	}
}

// handled moves a poller back from handling to polling, unless enough
// pollers poll already: then it reports that the poller should end.
func (c *Client) handled() (exit bool) {
	c.pollMu.Lock()
	defer c.pollMu.Unlock()
	c.handling--
	if c.polling >= c.o.MaxPendingRequests {
		return true
	}
	c.polling++
	return false
}

// idled is a poll the server left unanswered (408): the poller ends when
// more polls are parked than wanted.
func (c *Client) idled() (exit bool) {
	c.pollMu.Lock()
	defer c.pollMu.Unlock()
	if c.polling > c.wantPolls() {
		c.polling--
		return true
	}
	return false
}

// fail ends Run with err.
func (c *Client) fail(err error) {
	c.pollMu.Lock()
	defer c.pollMu.Unlock()
	c.polling--
	if c.runErr == nil {
		c.runErr = err
	}
	c.stop()
}

// poller polls for requests and serves each one it gets itself (a poller
// in its place takes over the polling meanwhile, see took). There are
// NumPendingRequests of them, more while requests are in progress with
// adaptive polls.
func (c *Client) poller(ctx context.Context) {
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
		req := c.pollTmpl.WithContext(ctx)
		sent := c.failures()
		resp, err := c.relayDo(req)
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
			if c.idled() {
				return
			}
		case resp.StatusCode == http.StatusForbidden:
			c.fail(ErrForbidden)
			return
		case resp.StatusCode != http.StatusOK:
			failed(fmt.Errorf("relay server answered %s", resp.Status))
		case c.work != nil && resp.Header.Get("Content-Type") == wire.BatchContentType:
			c.markUp(bo, sent)
			if err := c.dispatch(ctx, body, c.o.StreamBodies && resp.Header.Get(wire.StreamHeader) != ""); err != nil {
				failed(err)
			}
		default:
			c.markUp(bo, sent)
			if c.work != nil && c.batches.Load() {
				// The server no longer offers batches (it restarted
				// sharing its backends, say): post one message per post.
				c.batches.Store(false)
			}
			breq, err := wire.UnmarshalRequest(body)
			if err != nil {
				failed(fmt.Errorf("bad request message from the relay server: %w", err))
				continue
			}
			c.took(ctx)
			c.handle(ctx, breq, c.o.StreamBodies && resp.Header.Get(wire.StreamHeader) != "")
			if c.handled() {
				return
			}
		}
	}
	c.pollMu.Lock()
	c.polling--
	c.pollMu.Unlock()
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
		resp, err := c.relayDo(req.WithContext(hctx))
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

// backendRequest is the request to perform against the backend, and its
// path as the user asked (for the log).
func (c *Client) backendRequest(ctx context.Context, breq *wire.Request) (*http.Request, string, error) {
	u, err := url.Parse(breq.URL)
	if err != nil {
		return nil, "", err
	}
	path := u.Path
	u.Scheme, u.Host = c.backURL.Scheme, c.backURL.Host
	u.Path = c.backURL.Path + u.Path
	if u.RawPath != "" {
		u.RawPath = c.backURL.EscapedPath() + u.RawPath
	}
	var body io.ReadCloser = http.NoBody
	if len(breq.Body) > 0 {
		body = io.NopCloser(bytes.NewReader(breq.Body))
	}
	// Built whole: the URL is set parsed, not printed and parsed again.
	// The values share one array (one allocation, not one per name).
	h := make(http.Header, len(breq.Headers))
	vals := make([]string, 0, len(breq.Headers))
	for _, hd := range breq.Headers {
		k := http.CanonicalHeaderKey(hd.Name)
		if vs, ok := h[k]; ok {
			h[k] = append(vs, hd.Value) // beyond its capacity: copied
			continue
		}
		vals = append(vals, hd.Value)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	req := (&http.Request{
		Method: breq.Method, URL: u, Header: h, Body: body, ContentLength: int64(len(breq.Body)),
		Host: u.Host, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}).WithContext(ctx)
	if breq.Host != "" {
		req.Host = breq.Host
	}
	if len(breq.Body) > 0 {
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(breq.Body)), nil }
	}
	if req.Method == "" {
		req.Method = http.MethodGet
	}
	return req, path, nil
}

// handle serves one request, logging it when there is a Logger.
// streams says the server relays large bodies as they come (see
// Options.StreamBodies).
func (c *Client) handle(ctx context.Context, breq *wire.Request, streams bool) {
	start := time.Now()
	status, n, path := c.serve(ctx, breq, streams)
	if l := c.o.Logger; l != nil && l.Enabled(ctx, slog.LevelInfo) {
		if path == "" {
			path = breq.URL
		}
		client := ""
		for _, h := range breq.Headers {
			if len(h.Name) == len("X-Forwarded-For") && strings.EqualFold(h.Name, "X-Forwarded-For") {
				client = h.Value
			}
		}
		// The record goes to the handler without a caller's PC (the
		// logger's own methods look it up on every call, a fair share
		// of the relay client's CPU per request when it logs them all).
		r := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
		r.AddAttrs(slog.String("method", breq.Method), slog.String("host", breq.Host),
			slog.String("path", path), slog.Int("status", status), slog.Int64("bytes", n),
			slog.Duration("elapsed", time.Since(start).Round(time.Microsecond)), slog.String("client", client))
		l.Handler().Handle(ctx, r)
	}
}

// serve performs one request against the backend and posts its response;
// it returns the status, the body bytes relayed and the path, for the log.
func (c *Client) serve(ctx context.Context, breq *wire.Request, streams bool) (status int, n int64, path string) {
	id := breq.ID
	req, path, err := c.backendRequest(ctx, breq)
	if err != nil {
		c.postError(ctx, id, fmt.Sprintf("Failed to create request for backend: %v", err))
		return http.StatusInternalServerError, 0, ""
	}
	start := time.Now()
	hresp, err := c.backendDo(req)
	if err != nil {
		c.postError(ctx, id, fmt.Sprintf("Backend request failed with error: %v", err))
		return http.StatusInternalServerError, 0, path
	}
	status = hresp.StatusCode
	first := &wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: int32(hresp.StatusCode), Headers: headers(hresp.Header)}
	if hresp.StatusCode == http.StatusSwitchingProtocols {
		w, ok := hresp.Body.(io.WriteCloser)
		if !ok {
			hresp.Body.Close()
			c.postError(ctx, id, "Backend returned 101 Switching Protocols, which is not supported.")
			return http.StatusInternalServerError, 0, path
		}
		c.wg.Go(func() { c.streamToBackend(ctx, id, w) })
	}
	cl := hresp.ContentLength
	if hresp.Body == http.NoBody {
		// No body whatever the length says: the answer to a HEAD, a 204,
		// a 304 (their Content-Length header goes as it came).
		cl = 0
	}
	if cl >= 0 && cl <= int64(c.o.MaxChunkSize) && hresp.StatusCode != http.StatusSwitchingProtocols {
		// A short body of known length: read it and post the whole
		// response as one message, without the streaming machinery.
		first.Body = make([]byte, cl)
		_, err := io.ReadFull(hresp.Body, first.Body)
		hresp.Body.Close()
		if err != nil {
			c.postError(ctx, id, fmt.Sprintf("Failed to read backend response: %v", err))
			return http.StatusInternalServerError, 0, path
		}
		first.EOF = true
		first.Trailers = headers(hresp.Trailer)
		first.BackendDurationMs = time.Since(start).Milliseconds()
		if c.batches.Load() && len(first.Body) <= smallPost {
			c.postBatched(ctx, first)
		} else {
			c.post(ctx, first, false)
		}
		return status, int64(len(first.Body)), path
	}
	if streams && cl > 0 && cl < maxMessageBody && hresp.StatusCode != http.StatusSwitchingProtocols {
		if n, ok := c.postSpliced(ctx, first, hresp, start); ok {
			return status, n, path
		}
		return status, c.postBody(ctx, first, hresp, start), path
	}
	return status, c.stream(ctx, first, hresp, start, streams), path
}

// maxMessageBody bounds a body sent in one message: a protobuf field
// holds less than 2 GiB. A longer body goes in chunks.
const maxMessageBody = 1 << 31

// errPermanent is a 400 from /server/response: the request is over.
var errPermanent = errors.New("relay server refused the response chunk")

// smallPost is the largest chunk body posted as one message buffer; a
// larger one is sent from where it lies, between the message's encoded
// head and tail.
const smallPost = 64 << 10

// post sends one chunk, retrying transient failures a few times. With
// streams, a large chunk goes with its id before its body (see
// Options.StreamBodies).
func (c *Client) post(ctx context.Context, r *wire.Response, streams bool) error {
	var body func() io.ReadCloser
	var size int64
	switch {
	case len(r.Body) > smallPost:
		head, tail := r.MarshalAround(len(r.Body))
		if streams {
			head = r.AppendStreamHead(make([]byte, 0, r.HeadSize(len(r.Body))+r.TailSize()), len(r.Body))
			tail = r.AppendStreamTail(head[len(head):len(head)])
			head = head[:len(head):len(head)]
		}
		payload := r.Body
		size = int64(len(head) + len(payload) + len(tail))
		if c.o.ChunkedPosts {
			// A body that is an io.WriterTo is written by net/http with
			// WriteTo: each part in one write of the chunked encoding,
			// the payload straight from its buffer.
			body = func() io.ReadCloser { return io.NopCloser(&net.Buffers{head, payload, tail}) }
			size = -1
		} else {
			body = func() io.ReadCloser {
				return io.NopCloser(io.MultiReader(bytes.NewReader(head), bytes.NewReader(payload), bytes.NewReader(tail)))
			}
		}
	default:
		// Small: one buffer of the message's size, which the transport
		// writes with the headers in one go.
		msg := r.AppendMarshal(make([]byte, 0, r.Size()))
		size = int64(len(msg))
		body = func() io.ReadCloser { return io.NopCloser(bytes.NewReader(msg)) }
	}
	return c.send(ctx, c.postTmpl, body, size)
}

// send posts body (a fresh reader of it at each call; size -1: unknown)
// with the template tmpl, retrying transient failures a few times, as
// the original does. A 400 is errPermanent: the request is over.
func (c *Client) send(ctx context.Context, tmpl *http.Request, body func() io.ReadCloser, size int64) error {
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
		req := tmpl.WithContext(ctx)
		req.Body, req.ContentLength = body(), size
		if size >= 0 {
			req.GetBody = func() (io.ReadCloser, error) { return body(), nil }
		}
		resp, err := c.relayDo(req)
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
	}, false)
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
		resp, err := c.relayDo(req)
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
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	if n == 0 {
		return nil
	}
	out := make([]wire.Header, 0, n)
	for k, vs := range h {
		for _, v := range vs {
			out = append(out, wire.Header{Name: k, Value: v})
		}
	}
	return out
}
