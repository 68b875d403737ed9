package expose

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay"
)

// bcConn is one brickchain agent's websocket. Its handler goroutine reads
// frames and dispatches them; one writer goroutine owns writes, fed by an
// unbuffered channel so that nothing queues (senders wait, bounded by their
// own contexts); a pinger sends the ping frame and checks liveness.
type bcConn struct {
	s      *Service
	ws     *websocket.Conn
	ctx    context.Context // ends when the connection does
	cancel context.CancelFunc
	base   string // what mandate tokens must name
	remote string
	// mayServe reports whether the handshake may register id: always
	// without a token policy; with one, it needs serve on /expose/<id>.
	mayServe func(id string) bool
	out      chan []byte
	alive    atomic.Int64 // unix nanoseconds of the last sign of life

	mu      sync.Mutex
	tokens  usedTokens // mandate tokens this connection registered with
	regs    map[string]*relay.Registration
	pending map[string]chan bcResult
	streams map[string]*wsStream
	closeMu sync.Once
	ended   bool           // run is done; guarded by mu
	closers sync.WaitGroup // the close handshake fail started
}

// bcResult is an http-response, or why none will come.
type bcResult struct {
	f   brickchain.Frame
	err error
}

// errAgentGone: the agent's socket closed before it answered.
var errAgentGone = httpapi.Errorf(http.StatusBadGateway, "the agent disconnected before answering")

func (s *Service) serveSubscribe(w http.ResponseWriter, r *http.Request) {
	httpapi.SetRoute(r, "expose.subscribe")
	c := &bcConn{
		s: s, base: s.baseURL(r), remote: r.RemoteAddr, out: make(chan []byte),
		regs: make(map[string]*relay.Registration), pending: make(map[string]chan bcResult), streams: make(map[string]*wsStream),
	}
	c.mayServe = func(string) bool { return true }
	if p := s.opts.Policy; p.Enabled() {
		// A signed registration proves only that the agent holds its own
		// key, which anyone can make: under a policy the id must be
		// granted too, to the handshake's token or to anonymous (an id
		// named in an anonymous grant is the holder of one key's alone).
		c.mayServe = func(id string) bool { return p.Allow(r, auth.Serve, "/expose/"+id) }
	}
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		httpapi.WritePlain(w, r, errClosing)
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		InsecureSkipVerify: true, // the original accepted any Origin
		OnPongReceived:     func(context.Context, []byte) { c.markAlive() },
	})
	if err != nil {
		return // Accept answered the handshake error
	}
	// Frames up to MaxFrameBytes are decoded; larger ones, up to 16 times
	// that, are scanned for their id and refused; beyond that the socket
	// is closed (1009).
	ws.SetReadLimit(16*s.opts.MaxFrameBytes + 4096)
	c.ws = ws
	c.ctx, c.cancel = context.WithCancel(s.ctx)
	if !s.track(func() { s.conns[c] = struct{}{} }) {
		c.cancel()
		ws.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	c.markAlive()
	c.run()
}

func (c *bcConn) markAlive() { c.alive.Store(time.Now().UnixNano()) }

func (c *bcConn) run() {
	var wg sync.WaitGroup
	wg.Go(c.writeLoop)
	wg.Go(c.pingLoop)
	registerBy := time.AfterFunc(c.s.opts.RegisterTimeout, func() {
		c.mu.Lock()
		n := len(c.regs)
		c.mu.Unlock()
		if n == 0 {
			c.s.m.registration(transportBrickchain, "timeout")
			c.fail("", "not registered within "+c.s.opts.RegisterTimeout.String())
		}
	})
	err := c.readLoop()
	registerBy.Stop()
	c.cancel()
	wg.Wait()
	c.cleanup()
	c.ws.CloseNow()
	c.mu.Lock()
	c.ended = true
	c.mu.Unlock()
	c.closers.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		c.s.log.Debug("brickchain agent connection ended", "remote", c.remote, "err", err)
	}
}

// readLoop reads frames until the socket fails.
func (c *bcConn) readLoop() error {
	max := c.s.opts.MaxFrameBytes
	buf := make([]byte, 0, 4096)
	for {
		_, rd, err := c.ws.Reader(c.ctx)
		if err != nil {
			return err
		}
		c.markAlive()
		buf = buf[:0]
		b := bytes.NewBuffer(buf)
		n, err := b.ReadFrom(io.LimitReader(rd, max+1))
		if err != nil {
			return err
		}
		if n > max {
			typ, id, _ := brickchain.ScanHead(io.MultiReader(bytes.NewReader(b.Bytes()), rd))
			if _, err := io.Copy(io.Discard, rd); err != nil {
				return err
			}
			c.oversize(typ, id)
			continue
		}
		data := b.Bytes()
		if cap(data) <= 64<<10 {
			buf = data // keep small buffers, drop large ones
		}
		f, err := brickchain.Decode(data)
		if err != nil {
			c.s.log.Debug("brickchain frame ignored", "remote", c.remote, "type", f.Type, "err", err)
			if f.Type == brickchain.TypeRegistrationRequest {
				c.s.m.registration(transportBrickchain, "malformed")
				c.fail(f.ID, err.Error())
			}
			continue
		}
		if done := c.dispatch(f); done {
			return nil
		}
	}
}

// dispatch handles one frame; it reports whether the agent asked to
// disconnect.
func (c *bcConn) dispatch(f brickchain.Frame) bool {
	switch f.Type {
	case brickchain.TypeRegistrationRequest:
		c.register(f)
	case brickchain.TypeHTTPResponse:
		c.deliver(f.ID, bcResult{f: f})
	case brickchain.TypeWSResponse, brickchain.TypeWSMessage, brickchain.TypeWSTeardown:
		c.mu.Lock()
		st := c.streams[f.ID]
		c.mu.Unlock()
		if st != nil {
			st.fromAgent(f)
		}
	case brickchain.TypeDisconnect:
		c.ws.Close(websocket.StatusNormalClosure, "")
		return true
	}
	return false
}

// oversize handles a frame over MaxFrameBytes.
func (c *bcConn) oversize(typ, id string) {
	limit := strconv.FormatInt(c.s.opts.MaxFrameBytes, 10)
	switch typ {
	case brickchain.TypeHTTPResponse:
		c.deliver(id, bcResult{err: httpapi.Errorf(http.StatusBadGateway, "the agent's response is larger than %s bytes", limit)})
	case brickchain.TypeWSMessage:
		c.mu.Lock()
		st := c.streams[id]
		c.mu.Unlock()
		if st != nil {
			st.end(websocket.StatusMessageTooBig, "message larger than "+limit+" bytes", true)
		}
	case brickchain.TypeRegistrationRequest:
		c.s.m.registration(transportBrickchain, "malformed")
		c.fail(id, "registration request larger than "+limit+" bytes")
	}
	c.s.log.Debug("brickchain frame over the limit", "remote", c.remote, "type", typ, "limit", limit)
}

func (c *bcConn) deliver(id string, res bcResult) {
	c.mu.Lock()
	ch := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ch != nil {
		ch <- res // buffered, and delivered at most once
	}
}

// register handles a registration-request.
func (c *bcConn) register(f brickchain.Frame) {
	v, err := brickchain.VerifyMandate(f.MandateToken, brickchain.VerifyOptions{BaseURL: c.base, Now: c.s.opts.Now()})
	if err != nil {
		c.s.m.registration(transportBrickchain, registrationResult(err))
		c.fail(f.ID, err.Error())
		return
	}
	if len(f.Session) > 1024 {
		c.s.m.registration(transportBrickchain, "malformed")
		c.fail(f.ID, "session longer than 1024 bytes")
		return
	}
	id := brickchain.SessionID(v.KeyID, f.Session)
	if !c.mayServe(id) {
		c.s.m.registration(transportBrickchain, "forbidden")
		c.fail(f.ID, "registering "+id+" needs a token granted serve on /expose/"+id+" (or an anonymous grant for the id)")
		return
	}
	sum := sha256.Sum256([]byte(f.MandateToken))
	c.mu.Lock()
	mine := c.tokens.has(sum)
	c.mu.Unlock()
	if !mine {
		expires := v.Mandate.Timestamp.Add(time.Duration(v.Mandate.TTL) * time.Second)
		ctx, cancel := context.WithTimeout(c.ctx, c.s.opts.WriteTimeout)
		err := c.s.mandates.use(ctx, sum, expires, c.s.opts.Now())
		cancel()
		switch {
		case errors.Is(err, errMandateUsed):
			c.s.m.registration(transportBrickchain, "replayed")
			c.fail(f.ID, err.Error())
			return
		case err != nil:
			c.s.m.registration(transportBrickchain, "unavailable")
			c.s.log.Warn("brickchain registration: remembering its mandate token failed", "remote", c.remote, "err", err)
			c.fail(f.ID, "cannot check the mandate token now: try again")
			return
		}
		c.mu.Lock()
		c.tokens.add(sum)
		c.mu.Unlock()
	}
	c.mu.Lock()
	_, again := c.regs[id]
	full := !again && len(c.regs) >= c.s.opts.MaxRegistrations
	c.mu.Unlock()
	if full {
		c.s.m.registration(transportBrickchain, "too_many")
		c.fail(f.ID, "too many registrations on one connection")
		return
	}
	// Without a domain the agent is reached by path on the server's own
	// host, which is what the hostname says (the original agent treats an
	// empty one as a failed registration).
	hostname := ""
	if u, err := url.Parse(c.base); err == nil {
		hostname = u.Host
	}
	if c.s.opts.Domain != "" {
		hostname = id + "." + c.s.opts.Domain
	}
	if !again {
		// Registered before the answer goes out, so that a user who hears
		// of the id from the agent finds it.
		c.mu.Lock()
		c.regs[id] = c.s.hub.Register(id, &bcTransport{c: c})
		c.mu.Unlock()
		c.s.addBC(id, c)
	}
	resp := brickchain.RegistrationResponse{Base: brickchain.NewBase(brickchain.TypeRegistrationResponse, f.ID), KeyID: id, Hostname: hostname}
	if err := c.send(c.ctx, resp); err != nil {
		return
	}
	if again {
		c.s.m.registration(transportBrickchain, "renewed")
		return
	}
	c.s.m.registration(transportBrickchain, "ok")
	c.s.log.Info("brickchain agent registered", "id", id, "remote", c.remote)
}

func registrationResult(err error) string {
	switch {
	case errors.Is(err, brickchain.ErrTokenExpired), errors.Is(err, brickchain.ErrTokenFuture):
		return "expired"
	case errors.Is(err, brickchain.ErrTokenURI):
		return "wrong_uri"
	case errors.Is(err, brickchain.ErrTokenSignature):
		return "bad_signature"
	case errors.Is(err, brickchain.ErrTokenNoKey):
		return "no_key"
	}
	return "malformed"
}

// fail sends an error frame and closes the socket with a policy violation.
// It does not block the caller: the close handshake runs on its own.
func (c *bcConn) fail(reqID, msg string) {
	c.closeMu.Do(func() {
		c.s.log.Info("brickchain registration refused", "remote", c.remote, "reason", msg)
		b, _ := json.Marshal(brickchain.ErrorFrame{Base: brickchain.NewBase(brickchain.TypeError, reqID), Error: msg})
		reason := msg
		if len(reason) > 120 {
			reason = reason[:120]
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.ended {
			return
		}
		c.closers.Go(func() {
			ctx, cancel := context.WithTimeout(c.ctx, c.s.opts.WriteTimeout)
			defer cancel()
			c.ws.Write(ctx, websocket.MessageText, b)
			c.ws.Close(websocket.StatusPolicyViolation, reason)
		})
	})
}

// goAway closes the socket at shutdown; it waits for the close handshake
// (at most five seconds), so Shutdown runs it for every socket at once.
func (c *bcConn) goAway() {
	c.closeMu.Do(func() {
		c.ws.Close(websocket.StatusGoingAway, "server shutting down")
	})
}

// cleanup runs once the socket is done: registrations go, waiting
// requests and websockets learn the agent is gone.
func (c *bcConn) cleanup() {
	c.mu.Lock()
	regs := c.regs
	c.regs = map[string]*relay.Registration{}
	pending := c.pending
	c.pending = map[string]chan bcResult{}
	streams := c.streams
	c.streams = map[string]*wsStream{}
	c.mu.Unlock()
	for id, reg := range regs {
		reg.Close()
		c.s.removeBC(id, c)
	}
	for _, ch := range pending {
		ch <- bcResult{err: errAgentGone}
	}
	for _, st := range streams {
		st.end(websocket.StatusGoingAway, "agent disconnected", false)
	}
}

// send hands one frame to the writer.
func (c *bcConn) send(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.sendRaw(ctx, b)
}

func (c *bcConn) sendRaw(ctx context.Context, b []byte) error {
	select {
	case c.out <- b:
		return nil
	case <-c.ctx.Done():
		return errAgentGone
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *bcConn) writeLoop() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case b := <-c.out:
			ctx, cancel := context.WithTimeout(c.ctx, c.s.opts.WriteTimeout)
			err := c.ws.Write(ctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				c.cancel()
				return
			}
		}
	}
}

// pingLoop sends the ping frame every PingInterval, and a websocket ping
// whose pong renews the agent's liveness; an agent with no sign of life
// for RegistrationTTL is disconnected, which ends its registrations.
func (c *bcConn) pingLoop() {
	t := time.NewTicker(c.s.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, c.alive.Load())) > c.s.opts.RegistrationTTL {
			c.s.log.Info("brickchain agent silent, disconnecting", "remote", c.remote)
			c.cancel()
			return
		}
		if c.sendRaw(c.ctx, brickchain.PingFrame) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.s.opts.PingInterval)
		c.ws.Ping(ctx) // its pong marks the agent alive
		cancel()
	}
}

// bcTransport carries plain HTTP requests to one brickchain agent as
// http-request frames.
type bcTransport struct{ c *bcConn }

func (t *bcTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := t.c
	o := c.s.opts
	if isWebsocketUpgrade(req.Header) {
		return nil, httpapi.Errorf(http.StatusBadGateway, "websockets to this agent are served by the node it is connected to")
	}
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		var err error
		body, err = io.ReadAll(io.LimitReader(req.Body, o.MaxRequestBytes+1))
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		if int64(len(body)) > o.MaxRequestBytes {
			c.s.m.request(transportBrickchain, "too_large")
			return nil, httpapi.ErrRequestTooLarge
		}
	}
	id := brickchain.NewID()
	frame := brickchain.HTTPRequest{
		Base:    brickchain.NewBase(brickchain.TypeHTTPRequest, id),
		URL:     req.URL.Path,
		Query:   req.URL.RawQuery,
		Headers: brickchain.FirstValues(req.Header),
		Method:  req.Method,
		Body:    base64.StdEncoding.EncodeToString(body),
	}
	ch := make(chan bcResult, 1)
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		return nil, errAgentGone
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(req.Context(), o.ResponseTimeout)
	defer cancel()
	timeout := func() (*http.Response, error) {
		if req.Context().Err() != nil {
			return nil, req.Context().Err()
		}
		c.s.m.request(transportBrickchain, "timeout")
		return nil, &httpapi.Error{Status: http.StatusGatewayTimeout, Message: "timeout"}
	}
	if err := c.send(ctx, frame); err != nil {
		if ctx.Err() != nil {
			return timeout()
		}
		return nil, err
	}
	var res bcResult
	select {
	case res = <-ch:
	case <-ctx.Done():
		return timeout()
	}
	if res.err != nil {
		c.s.m.request(transportBrickchain, "agent_error")
		return nil, res.err
	}
	return c.s.response(req, res.f)
}

// response turns an http-response frame into the user's response.
func (s *Service) response(req *http.Request, f brickchain.Frame) (*http.Response, error) {
	if f.Status < 200 || f.Status > 999 {
		s.m.request(transportBrickchain, "agent_error")
		return nil, httpapi.Errorf(http.StatusBadGateway, "the agent answered with an invalid status %d", f.Status)
	}
	body, err := base64.StdEncoding.DecodeString(f.Body)
	if err != nil {
		s.m.request(transportBrickchain, "agent_error")
		return nil, httpapi.Errorf(http.StatusBadGateway, "the agent's response body is not base64")
	}
	h := make(http.Header, len(f.Headers)+1)
	for k, v := range f.Headers {
		if validHeader(k, v) {
			h.Set(k, v)
		}
	}
	// The length is what the body is, whatever the agent said.
	h.Del("Content-Length")
	h.Del("Transfer-Encoding")
	if h.Get("Content-Type") == "" && f.ContentType != "" && validHeader("Content-Type", f.ContentType) {
		h.Set("Content-Type", f.ContentType)
	}
	s.m.request(transportBrickchain, "ok")
	return &http.Response{
		Status:        strconv.Itoa(f.Status) + " " + http.StatusText(f.Status),
		StatusCode:    f.Status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}, nil
}

// validHeader reports whether an agent's header may be passed on: a token
// name and a value without control characters (no response splitting).
func validHeader(k, v string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
