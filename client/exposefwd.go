package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// The agent's side of a native expose connection.
//
// The server opens one yamux stream per HTTP/1.1 connection its transport
// pools for the agent, and sends requests on it one after the other. So
// the agent needs no HTTP server, reverse proxy and connection pool of its
// own: it pins one connection to the local service to each stream (a
// pair) and forwards each request as it comes, rewritten as a reverse
// proxy would, then the answer. A CPU profile of the bench showed the
// agent costing about one httputil.ReverseProxy per request when it ran
// an http.Server with one: every request crossed the server's response
// writer, the proxy's header copies and the transport's read and write
// loops. A pair does the forwarding on the stream's goroutine; beside it
// are a watcher of the local connection (see pair.ready) and, while a
// request body is being sent, the goroutine sending it. BENCHMARKS.md
// has the figures.

// Buffer sizes of a pair. Large bodies bypass the buffers (reads and
// writes at least as large go straight through), so they stay small:
// servers keep up to 256 idle streams per agent.
const (
	pairStreamReadBuf  = 4 << 10
	pairStreamWriteBuf = 8 << 10
	pairLocalReadBuf   = 8 << 10
	pairLocalWriteBuf  = 4 << 10
)

// Timeouts of a pair, those of the http.Server and http.Transport the
// agent ran before.
const (
	pairHeaderTimeout = 30 * time.Second
	pairDialTimeout   = 10 * time.Second
	// pairBodyGrace is how long a finished answer waits for the request
	// body to finish sending before the pair gives up on it (the local
	// service answered without reading it all): http.Transport's 50 ms.
	pairBodyGrace = 50 * time.Millisecond
)

// agentServer serves the streams the server opens on one session.
type agentServer struct {
	target *url.URL
	o      ExposeOptions
	dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
	addr string // target host:port

	ctx    context.Context // ends at the forced close: dials stop
	cancel context.CancelFunc

	mu      sync.Mutex
	pairs   map[*pair]struct{}
	closing bool
	wg      sync.WaitGroup // the pairs' goroutines
}

func newAgentServer(target *url.URL, o ExposeOptions) *agentServer {
	nd := &net.Dialer{Timeout: pairDialTimeout, KeepAlive: 30 * time.Second}
	s := &agentServer{target: target, o: o, dialer: nd, addr: hostPort(target), pairs: map[*pair]struct{}{}}
	if target.Scheme == "https" {
		// HTTP/1.1 only, as the transport without ForceAttemptHTTP2 was.
		s.dialer = &tls.Dialer{NetDialer: nd, Config: &tls.Config{ServerName: target.Hostname(), NextProtos: []string{"http/1.1"}}}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// hostPort is u's host with the scheme's port when it names none.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// serve accepts streams until acceptCtx ends or the session closes; each
// stream is served by its own goroutine, owned by s (see shutdown, close).
func (s *agentServer) serve(acceptCtx context.Context, sess *yamux.Session) {
	for {
		st, err := sess.AcceptStreamWithContext(acceptCtx)
		if err != nil {
			return
		}
		p := &pair{s: s, st: st}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			st.Close()
			continue
		}
		s.pairs[p] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			p.serve()
			s.mu.Lock()
			delete(s.pairs, p)
			s.mu.Unlock()
		}()
	}
}

// shutdown is http.Server.Shutdown's equivalent, called once serve
// returned: idle pairs and upgraded ones (which Shutdown leaves to the
// session's close) close now, busy ones after their answer; when ctx ends
// first the rest are closed. Upgraded pairs close now so that a websocket
// does not hold up the agent's exit, as before.
func (s *agentServer) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	for p := range s.pairs {
		if p.state != pairBusy {
			p.abort()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
	case <-ctx.Done():
		s.close()
		<-done
	}
}

// close closes every pair at once and waits for their goroutines.
func (s *agentServer) close() {
	s.cancel()
	s.mu.Lock()
	s.closing = true
	for p := range s.pairs {
		p.abort()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// pair states, guarded by agentServer.mu.
const (
	pairIdle     = iota // waiting for a request
	pairBusy            // between a request's first byte and its answer's end
	pairUpgraded        // a byte splice after 101 Switching Protocols
)

// pair is one stream and the connection to the local service it is
// pinned to (dialed at the first request, and again when the local
// service closed it while idle).
type pair struct {
	s     *agentServer
	st    net.Conn
	state int // guarded by s.mu

	sr *bufio.Reader
	sw *bufio.Writer

	lc net.Conn
	lr *bufio.Reader
	lw *bufio.Writer
	// The watcher owns reading lc between answers, so that a connection
	// the local service closes while idle is noticed before a request is
	// written to it (as the transport's read loop does): it peeks, tells
	// on ready, and waits for resume before it peeks again.
	ready   chan error
	resume  chan struct{}
	watched chan struct{} // closed when the watcher returned
}

// setState records the pair's state; false when the server is closing
// and the pair should stop instead.
func (p *pair) setState(state int) bool {
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	if p.s.closing && state != pairBusy {
		return false
	}
	p.state = state
	return true
}

// abort closes both connections, which ends whatever the pair's
// goroutines are blocked on. Called with s.mu held, or by the pair.
// (The pair sets lc under s.mu too.)
func (p *pair) abort() {
	p.st.Close()
	if p.lc != nil {
		p.lc.Close()
	}
}

func (p *pair) serve() {
	p.sr = bufio.NewReaderSize(p.st, pairStreamReadBuf)
	p.sw = bufio.NewWriterSize(p.st, pairStreamWriteBuf)
	defer func() {
		p.s.mu.Lock()
		p.abort()
		p.s.mu.Unlock()
		p.dropLocal()
	}()
	for {
		// Idle until a request starts; then it has 30 s to send its
		// header, as http.Server's ReadHeaderTimeout said.
		if _, err := p.sr.Peek(1); err != nil {
			return
		}
		if !p.setState(pairBusy) {
			return
		}
		p.st.SetReadDeadline(time.Now().Add(pairHeaderTimeout))
		req, err := http.ReadRequest(p.sr)
		p.st.SetReadDeadline(time.Time{})
		if err != nil {
			p.s.o.Logger.Debug("expose: bad request from the server", "err", err)
			return
		}
		if !p.forward(req) {
			return
		}
		if !p.setState(pairIdle) {
			return
		}
	}
}

// dropLocal closes the local connection and waits for its watcher.
func (p *pair) dropLocal() {
	if p.lc == nil {
		return
	}
	p.s.mu.Lock()
	p.lc.Close()
	p.lc = nil
	p.s.mu.Unlock()
	close(p.resume)
	<-p.watched
	p.lr, p.lw = nil, nil
}

// dial connects the pair to the local service and starts the watcher.
func (p *pair) dial() error {
	lc, err := p.s.dialer.DialContext(p.s.ctx, "tcp", p.s.addr)
	if err != nil {
		return err
	}
	p.s.mu.Lock()
	if p.s.ctx.Err() != nil {
		p.s.mu.Unlock()
		lc.Close()
		return p.s.ctx.Err()
	}
	p.lc = lc
	p.s.mu.Unlock()
	p.lr = bufio.NewReaderSize(lc, pairLocalReadBuf)
	p.lw = bufio.NewWriterSize(lc, pairLocalWriteBuf)
	p.ready = make(chan error, 1)
	p.resume = make(chan struct{})
	p.watched = make(chan struct{})
	go watch(p.lr, p.ready, p.resume, p.watched)
	return nil
}

func watch(lr *bufio.Reader, ready chan<- error, resume <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		_, err := lr.Peek(1)
		ready <- err
		if err != nil {
			return
		}
		if _, ok := <-resume; !ok {
			return
		}
	}
}

// localReady makes sure the pair has a live local connection: one the
// watcher has news of while idle (the local service closed it, or sent
// data no request asked for) is dropped and dialed again.
func (p *pair) localReady() error {
	if p.lc != nil {
		select {
		case <-p.ready:
			p.dropLocal() // closed (or babbling) while idle: dial again
		default:
			return nil
		}
	}
	return p.dial()
}

// forward sends req to the local service and its answer back; false when
// the pair must close.
func (p *pair) forward(req *http.Request) bool {
	start := time.Now()
	out, reqUp := p.outgoing(req)
	status, n, keep := p.roundTrip(req, out, reqUp)
	if o := p.s.o; o.Logger.Enabled(context.Background(), slog.LevelInfo) {
		o.Logger.LogAttrs(context.Background(), slog.LevelInfo, "request", slog.String("method", req.Method), slog.String("host", req.Host),
			slog.String("path", req.URL.Path), slog.Int("status", status), slog.Int64("bytes", n),
			slog.Duration("elapsed", time.Since(start).Round(time.Microsecond)), slog.String("client", req.Header.Get("X-Forwarded-For")))
	}
	return keep && !req.Close
}

// roundTrip forwards one exchange; it returns the status and body size
// for the log, and whether the pair may serve another request.
func (p *pair) roundTrip(req, out *http.Request, reqUp string) (status int, n int64, keep bool) {
	bodyless := req.Body == nil || req.Body == http.NoBody
	var resp *http.Response
	var wrote chan error
	for attempt := 0; ; attempt++ {
		reused := p.lc != nil
		if err := p.localReady(); err != nil {
			return p.badGateway(err, wrote)
		}
		if !reused {
			// A connection dialed just now is not retried.
			attempt = 1
		}
		// The body goes in its own goroutine: the local service may
		// answer before it has read it all (full duplex).
		if bodyless {
			err := out.Write(p.lw)
			if err == nil {
				err = p.lw.Flush()
			}
			if err != nil {
				p.dropLocal()
				if attempt == 0 {
					continue
				}
				return p.badGateway(err, nil)
			}
		} else {
			wrote = make(chan error, 1)
			go func(lw *bufio.Writer) {
				err := out.Write(lw)
				if err == nil {
					err = lw.Flush()
				}
				wrote <- err
			}(p.lw)
		}
		if err := <-p.ready; err != nil {
			// Nothing came back. A request without a body on a reused
			// connection the local service closed meanwhile is sent
			// again on a new one, as the transport did.
			if bodyless && attempt == 0 {
				p.dropLocal()
				continue
			}
			return p.badGateway(err, wrote)
		}
		var err error
		resp, err = http.ReadResponse(p.lr, out)
		for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			// 100 Continue and the like go to the server as they come.
			if err = resp.Write(p.sw); err == nil {
				err = p.sw.Flush()
			}
			if err != nil {
				p.closeAll(wrote)
				return http.StatusBadGateway, 0, false
			}
			resp, err = http.ReadResponse(p.lr, out)
		}
		if err != nil {
			return p.badGateway(err, wrote)
		}
		break
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return p.upgrade(resp, reqUp, wrote)
	}
	removeHopByHop(resp.Header)
	cb := &countingBody{body: resp.Body, lr: p.lr, sw: p.sw}
	if resp.Body != http.NoBody {
		resp.Body = cb
	}
	err := resp.Write(writerOnly{p.sw})
	if err == nil {
		err = p.sw.Flush()
	}
	if err != nil {
		p.closeAll(wrote)
		return resp.StatusCode, cb.n, false
	}
	keep = !resp.Close
	if wrote != nil {
		pending := wrote
		select {
		case err = <-wrote:
			pending = nil
		default:
			t := time.NewTimer(pairBodyGrace)
			select {
			case err = <-wrote:
				pending = nil
			case <-t.C:
				err = errors.New("the local service answered without reading the whole request body")
			}
			t.Stop()
		}
		if err != nil {
			p.closeAll(pending)
			return resp.StatusCode, cb.n, false
		}
	}
	if !keep {
		p.dropLocal()
		return resp.StatusCode, cb.n, false
	}
	p.resume <- struct{}{}
	return resp.StatusCode, cb.n, true
}

// closeAll ends the pair in the middle of an exchange and waits for the
// request body's goroutine, if any (wrote, or nil).
func (p *pair) closeAll(wrote chan error) {
	p.s.mu.Lock()
	p.abort()
	p.s.mu.Unlock()
	if wrote != nil {
		<-wrote
	}
	p.dropLocal()
}

// badGateway answers 502 with the text the agent always gave, and closes
// the pair (the request body may not have been read).
func (p *pair) badGateway(err error, wrote chan error) (int, int64, bool) {
	if p.lc != nil {
		p.s.mu.Lock()
		p.lc.Close()
		p.s.mu.Unlock()
	}
	msg := fmt.Sprintf("postern expose: the local service at %s cannot be reached: %s", p.s.target.Host, oneLineErr(err))
	resp := &http.Response{
		StatusCode: http.StatusBadGateway, ProtoMajor: 1, ProtoMinor: 1, Close: true,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		ContentLength: int64(len(msg)), Body: io.NopCloser(strings.NewReader(msg)),
	}
	if resp.Write(p.sw) == nil {
		p.sw.Flush()
	}
	p.closeAll(wrote)
	return http.StatusBadGateway, int64(len(msg)), false
}

// upgrade relays a 101 answer, then splices the stream and the local
// connection until either side ends.
func (p *pair) upgrade(resp *http.Response, reqUp string, wrote chan error) (int, int64, bool) {
	resUp := upgradeType(resp.Header)
	if !strings.EqualFold(reqUp, resUp) {
		return p.badGateway(fmt.Errorf("backend tried to switch protocol %q when %q was requested", resUp, reqUp), wrote)
	}
	if wrote != nil {
		if err := <-wrote; err != nil {
			p.closeAll(nil)
			return http.StatusSwitchingProtocols, 0, false
		}
	}
	resp.Body = nil
	if err := resp.Write(p.sw); err != nil || p.sw.Flush() != nil {
		p.closeAll(nil)
		return http.StatusSwitchingProtocols, 0, false
	}
	if !p.setState(pairUpgraded) {
		p.closeAll(nil)
		return http.StatusSwitchingProtocols, 0, false
	}
	// The watcher waits for a resume that never comes; the splice reads
	// both buffered readers, so nothing already received is lost.
	done := make(chan struct{}, 2)
	go func() { io.Copy(p.lc, p.sr); done <- struct{}{} }()
	go func() { io.Copy(p.st, p.lr); done <- struct{}{} }()
	<-done
	p.closeAll(nil) // ends the other direction
	<-done
	return http.StatusSwitchingProtocols, 0, false
}

// outgoing is the request to the local service, rewritten as the agent's
// reverse proxy did: URL to the target, the public Host kept unless
// RewriteHost, X-Forwarded-* and Forwarded as the server set them,
// hop-by-hop headers dropped but for an upgrade's. It returns the
// upgrade asked for, if any.
func (p *pair) outgoing(req *http.Request) (*http.Request, string) {
	out := new(http.Request)
	*out = *req
	out.Header = req.Header.Clone()
	if out.Header == nil {
		out.Header = http.Header{}
	}
	u := *req.URL
	out.URL = &u
	out.URL.RawQuery = cleanQueryParams(out.URL.RawQuery)
	rewriteRequestURL(out, p.s.target)
	out.Host = ""
	if !p.s.o.RewriteHost {
		out.Host = req.Host
	}
	up := upgradeType(out.Header)
	removeHopByHop(out.Header)
	if headerHasToken(req.Header["Te"], "trailers") {
		out.Header.Set("Te", "trailers")
	}
	if up != "" {
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", up)
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		// Request.Write would put in Go's own.
		out.Header["User-Agent"] = []string{""}
	}
	// The pair's local connection ends with the stream's: tell the local
	// service when this is the last request.
	out.Close = req.Close
	out.RequestURI = ""
	return out, up
}

// countingBody counts a response body's bytes for the log, and flushes
// what the stream's writer holds whenever reading on would wait for the
// local service: an answer that is there at once leaves in one go, one
// that trickles (an event stream) leaves as it comes. (A reverse proxy
// flushes streams at every write and holds others up to its flush
// interval; this needs no timer.)
type countingBody struct {
	body io.ReadCloser
	lr   *bufio.Reader
	sw   *bufio.Writer
	n    int64
}

func (b *countingBody) Read(buf []byte) (int, error) {
	if b.lr.Buffered() == 0 {
		if err := b.sw.Flush(); err != nil {
			return 0, err
		}
	}
	n, err := b.body.Read(buf)
	b.n += int64(n)
	return n, err
}

func (b *countingBody) Close() error { return b.body.Close() }

// writerOnly hides the bufio.Writer's ReadFrom, which would read into
// the buffer countingBody flushes.
type writerOnly struct{ io.Writer }

// Hop-by-hop handling as net/http/httputil.ReverseProxy does it.

var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		h.Del(f)
	}
}

func upgradeType(h http.Header) string {
	if !headerHasToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

// rewriteRequestURL, joinURLPath, singleJoiningSlash and
// cleanQueryParams are ProxyRequest.SetURL's and ReverseProxy's.

func rewriteRequestURL(req *http.Request, target *url.URL) {
	targetQuery := target.RawQuery
	req.URL.Scheme = target.Scheme
	req.URL.Host = target.Host
	req.URL.Path, req.URL.RawPath = joinURLPath(target, req.URL)
	if targetQuery == "" || req.URL.RawQuery == "" {
		req.URL.RawQuery = targetQuery + req.URL.RawQuery
	} else {
		req.URL.RawQuery = targetQuery + "&" + req.URL.RawQuery
	}
}

func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return singleJoiningSlash(a.Path, b.Path), ""
	}
	apath := a.EscapedPath()
	bpath := b.EscapedPath()
	aslash := strings.HasSuffix(apath, "/")
	bslash := strings.HasPrefix(bpath, "/")
	switch {
	case aslash && bslash:
		return a.Path + b.Path[1:], apath + bpath[1:]
	case !aslash && !bslash:
		return a.Path + "/" + b.Path, apath + "/" + bpath
	}
	return a.Path + b.Path, apath + bpath
}

func singleJoiningSlash(a, b string) string {
	aslash := strings.HasSuffix(a, "/")
	bslash := strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}

func cleanQueryParams(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
