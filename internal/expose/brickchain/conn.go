package brickchain

import (
	"bytes"
	"context"
	"crypto/sha256"
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
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay"
)

// conn is one brickchain agent's websocket. Its handler goroutine reads
// frames and dispatches them; one writer goroutine owns writes, fed by an
// unbuffered channel so that nothing queues (senders wait, bounded by their
// own contexts); a pinger sends the ping frame and checks liveness.
type conn struct {
	t      *Transport
	ws     *websocket.Conn
	ctx    context.Context // ends when the connection does
	cancel context.CancelFunc
	site   Site // BaseURL: what mandate tokens must name
	remote string
	// mayServe reports whether the handshake may register id: always
	// without a token policy; with one, it needs serve on /expose/<id>.
	mayServe func(id string) bool
	out      chan []byte
	alive    atomic.Int64 // unix nanoseconds of the last sign of life

	mu      sync.Mutex
	tokens  usedTokens // mandate tokens this connection registered with
	regs    map[string]*relay.Registration
	pending map[string]chan result
	streams map[string]*wsStream
	closeMu sync.Once
	ended   bool           // run is done; guarded by mu
	closers sync.WaitGroup // the close handshake fail started
}

// result is an http-response, or why none will come.
type result struct {
	f   Frame
	err error
}

// errAgentGone: the agent's socket closed before it answered.
var errAgentGone = httpapi.Errorf(http.StatusBadGateway, "the agent disconnected before answering")

// ServeSubscribe serves an agent's websocket on the subscribe endpoint
// until it closes; site says where its users reach it.
func (t *Transport) ServeSubscribe(w http.ResponseWriter, r *http.Request, site Site) {
	httpapi.SetRoute(w, "expose.subscribe")
	c := &conn{
		t: t, site: site, remote: r.RemoteAddr, out: make(chan []byte),
		regs: make(map[string]*relay.Registration), pending: make(map[string]chan result), streams: make(map[string]*wsStream),
	}
	c.mayServe = func(string) bool { return true }
	if p := t.policy; p.Enabled() {
		// A signed registration proves only that the agent holds its own
		// key, which anyone can make: under a policy the id must be
		// granted too, to the handshake's token or to anonymous (an id
		// named in an anonymous grant is the holder of one key's alone).
		c.mayServe = func(id string) bool { return p.Allow(r, auth.Serve, "/expose/"+id) }
	}
	if t.live.Closing() {
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
	ws.SetReadLimit(16*t.opts.MaxFrameBytes + 4096)
	c.ws = ws
	c.ctx, c.cancel = context.WithCancel(t.ctx)
	if !t.live.Add(c) {
		c.cancel()
		ws.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer t.live.Remove(c)
	c.markAlive()
	c.run()
}

func (c *conn) markAlive() { c.alive.Store(time.Now().UnixNano()) }

func (c *conn) run() {
	var wg sync.WaitGroup
	wg.Go(c.writeLoop)
	wg.Go(c.pingLoop)
	registerBy := time.AfterFunc(c.t.opts.RegisterTimeout, func() {
		c.mu.Lock()
		n := len(c.regs)
		c.mu.Unlock()
		if n == 0 {
			c.t.count.Registration("timeout")
			c.fail("", "not registered within "+c.t.opts.RegisterTimeout.String())
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
		c.t.log.Debug("brickchain agent connection ended", "remote", c.remote, "err", err)
	}
}

// readLoop reads frames until the socket fails.
func (c *conn) readLoop() error {
	max := c.t.opts.MaxFrameBytes
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
			typ, id, _ := ScanHead(io.MultiReader(bytes.NewReader(b.Bytes()), rd))
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
		f, err := Decode(data)
		if err != nil {
			c.t.log.Debug("brickchain frame ignored", "remote", c.remote, "type", f.Type, "err", err)
			if f.Type == TypeRegistrationRequest {
				c.t.count.Registration("malformed")
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
func (c *conn) dispatch(f Frame) bool {
	switch f.Type {
	case TypeRegistrationRequest:
		c.register(f)
	case TypeHTTPResponse:
		c.deliver(f.ID, result{f: f})
	case TypeWSResponse, TypeWSMessage, TypeWSTeardown:
		c.mu.Lock()
		st := c.streams[f.ID]
		c.mu.Unlock()
		if st != nil {
			st.fromAgent(f)
		}
	case TypeDisconnect:
		c.ws.Close(websocket.StatusNormalClosure, "")
		return true
	}
	return false
}

// oversize handles a frame over MaxFrameBytes.
func (c *conn) oversize(typ, id string) {
	limit := strconv.FormatInt(c.t.opts.MaxFrameBytes, 10)
	switch typ {
	case TypeHTTPResponse:
		c.deliver(id, result{err: httpapi.Errorf(http.StatusBadGateway, "the agent's response is larger than %s bytes", limit)})
	case TypeWSMessage:
		c.mu.Lock()
		st := c.streams[id]
		c.mu.Unlock()
		if st != nil {
			st.end(websocket.StatusMessageTooBig, "message larger than "+limit+" bytes", true)
		}
	case TypeRegistrationRequest:
		c.t.count.Registration("malformed")
		c.fail(id, "registration request larger than "+limit+" bytes")
	}
	c.t.log.Debug("brickchain frame over the limit", "remote", c.remote, "type", typ, "limit", limit)
}

func (c *conn) deliver(id string, res result) {
	c.mu.Lock()
	ch := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ch != nil {
		ch <- res // buffered, and delivered at most once
	}
}

// register handles a registration-request.
func (c *conn) register(f Frame) {
	v, err := VerifyMandate(f.MandateToken, VerifyOptions{BaseURL: c.site.BaseURL, Now: c.t.opts.Now()})
	if err != nil {
		c.t.count.Registration(registrationResult(err))
		c.fail(f.ID, err.Error())
		return
	}
	if len(f.Session) > 1024 {
		c.t.count.Registration("malformed")
		c.fail(f.ID, "session longer than 1024 bytes")
		return
	}
	id := SessionID(v.KeyID, f.Session)
	if !c.mayServe(id) {
		c.t.count.Registration("forbidden")
		c.fail(f.ID, "registering "+id+" needs a token granted serve on /expose/"+id+" (or an anonymous grant for the id)")
		return
	}
	sum := sha256.Sum256([]byte(f.MandateToken))
	c.mu.Lock()
	mine := c.tokens.has(sum)
	c.mu.Unlock()
	if !mine {
		expires := v.Mandate.Timestamp.Add(time.Duration(v.Mandate.TTL) * time.Second)
		ctx, cancel := context.WithTimeout(c.ctx, c.t.opts.WriteTimeout)
		err := c.t.mandates.use(ctx, sum, expires, c.t.opts.Now())
		cancel()
		switch {
		case errors.Is(err, errMandateUsed):
			c.t.count.Registration("replayed")
			c.fail(f.ID, err.Error())
			return
		case err != nil:
			c.t.count.Registration("unavailable")
			c.t.log.Warn("brickchain registration: remembering its mandate token failed", "remote", c.remote, "err", err)
			c.fail(f.ID, "cannot check the mandate token now: try again")
			return
		}
		c.mu.Lock()
		c.tokens.add(sum)
		c.mu.Unlock()
	}
	c.mu.Lock()
	_, again := c.regs[id]
	full := !again && len(c.regs) >= c.t.opts.MaxRegistrations
	c.mu.Unlock()
	if full {
		c.t.count.Registration("too_many")
		c.fail(f.ID, "too many registrations on one connection")
		return
	}
	// Without a domain the agent is reached by path on the server's own
	// host, which is what the hostname says (the original agent treats an
	// empty one as a failed registration).
	hostname := ""
	if u, err := url.Parse(c.site.BaseURL); err == nil {
		hostname = u.Host
	}
	if c.site.Domain != "" {
		hostname = id + "." + c.site.Domain
	}
	if !again {
		// Registered before the answer goes out, so that a user who hears
		// of the id from the agent finds it.
		c.mu.Lock()
		c.regs[id] = c.t.hub.Register(id, &backend{c: c})
		c.mu.Unlock()
		c.t.count.Agents(1)
	}
	resp := RegistrationResponse{Base: NewBase(TypeRegistrationResponse, f.ID), KeyID: id, Hostname: hostname}
	if err := c.send(c.ctx, resp); err != nil {
		return
	}
	if again {
		c.t.count.Registration("renewed")
		return
	}
	c.t.count.Registration("ok")
	c.t.log.Info("brickchain agent registered", "id", id, "remote", c.remote)
}

func registrationResult(err error) string {
	switch {
	case errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenFuture):
		return "expired"
	case errors.Is(err, ErrTokenURI):
		return "wrong_uri"
	case errors.Is(err, ErrTokenSignature):
		return "bad_signature"
	case errors.Is(err, ErrTokenNoKey):
		return "no_key"
	}
	return "malformed"
}

// fail sends an error frame and closes the socket with a policy violation.
// It does not block the caller: the close handshake runs on its own.
func (c *conn) fail(reqID, msg string) {
	c.closeMu.Do(func() {
		c.t.log.Info("brickchain registration refused", "remote", c.remote, "reason", msg)
		b, _ := json.Marshal(ErrorFrame{Base: NewBase(TypeError, reqID), Error: msg})
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
			ctx, cancel := context.WithTimeout(c.ctx, c.t.opts.WriteTimeout)
			defer cancel()
			c.ws.Write(ctx, websocket.MessageText, b)
			c.ws.Close(websocket.StatusPolicyViolation, reason)
		})
	})
}

// goAway closes the socket at shutdown; it waits for the close handshake
// (at most five seconds), so Shutdown runs it for every socket at once.
func (c *conn) goAway() {
	c.closeMu.Do(func() {
		c.ws.Close(websocket.StatusGoingAway, "server shutting down")
	})
}

// cleanup runs once the socket is done: registrations go, waiting
// requests and websockets learn the agent is gone.
func (c *conn) cleanup() {
	c.mu.Lock()
	regs := c.regs
	c.regs = map[string]*relay.Registration{}
	pending := c.pending
	c.pending = map[string]chan result{}
	streams := c.streams
	c.streams = map[string]*wsStream{}
	c.mu.Unlock()
	for _, reg := range regs {
		reg.Close()
		c.t.count.Agents(-1)
	}
	for _, ch := range pending {
		ch <- result{err: errAgentGone}
	}
	for _, st := range streams {
		st.end(websocket.StatusGoingAway, "agent disconnected", false)
	}
}

// send hands one frame to the writer.
func (c *conn) send(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.sendRaw(ctx, b)
}

func (c *conn) sendRaw(ctx context.Context, b []byte) error {
	select {
	case c.out <- b:
		return nil
	case <-c.ctx.Done():
		return errAgentGone
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *conn) writeLoop() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case b := <-c.out:
			ctx, cancel := context.WithTimeout(c.ctx, c.t.opts.WriteTimeout)
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
func (c *conn) pingLoop() {
	t := time.NewTicker(c.t.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, c.alive.Load())) > c.t.opts.RegistrationTTL {
			c.t.log.Info("brickchain agent silent, disconnecting", "remote", c.remote)
			c.cancel()
			return
		}
		if c.sendRaw(c.ctx, PingFrame) != nil {
			return
		}
		// The websocket library closes the connection when a write
		// outlives its context, so the ping is bounded as every write is
		// (WriteTimeout), never by the interval: a ping that went out
		// late on a busy machine closed a healthy agent's socket. Its
		// pong, awaited as long, marks the agent alive (OnPongReceived).
		ctx, cancel := context.WithTimeout(c.ctx, c.t.opts.WriteTimeout)
		c.ws.Ping(ctx)
		cancel()
	}
}
