package expose

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/expose/live"
	"github.com/postern/postern/internal/expose/muxconn"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/ratelimit"
	"github.com/postern/postern/internal/relay"
)

// The native agents' side of the front door: who may claim a name.

// serveAgent accepts a native agent on /agent?name=NAME once it may claim
// the name, and serves it until it goes.
func (s *Service) serveAgent(w http.ResponseWriter, r *http.Request) {
	httpapi.SetRoute(w, "expose.agent")
	if s.closing.Load() {
		refuseAgent(w, r, errClosing)
		return
	}
	rules, perr := muxconn.ParseAccess(r.Header)
	if perr != nil {
		s.m.registration(transportNative, "malformed")
		httpapi.WritePlain(w, r, httpapi.Errorf(http.StatusBadRequest, "access rules: %v", perr))
		return
	}
	name := strings.ToLower(r.URL.Query().Get(AgentNameParam))
	acc := newAccess(name, rules)
	result, err := s.authorizeAgent(r, name, acc.rules())
	if err != nil {
		s.m.registration(transportNative, result)
		refuseAgent(w, r, err)
		return
	}
	req, herr := parseAgentRequest(r.URL.Query())
	if herr == nil && req.proto != protoHTTP && len(acc.rules()) > 0 {
		herr = httpapi.Errorf(http.StatusBadRequest, "access rules apply to HTTP agents only, not to %s://", req.proto)
	}
	if herr != nil {
		s.m.registration(transportNative, "malformed")
		refuseAgent(w, r, herr)
		return
	}
	var b binding = hubBinding{t: s.native, public: s.publicURL(r, name), acc: acc}
	switch req.proto {
	case protoTCP:
		b, herr = s.tcpBinding(r, name, req.port)
	case protoTLS:
		b, herr = s.tlsBinding(r, name)
	}
	if herr != nil {
		s.m.registration(transportNative, "refused")
		refuseAgent(w, r, herr)
		return
	}
	s.native.serve(w, r, name, b, acc)
}

// refuseAgent answers a native agent's handshake with e, marked as
// postern's own answer (the agent tells it from a proxy's by the mark).
func refuseAgent(w http.ResponseWriter, r *http.Request, e *httpapi.Error) {
	httpapi.MarkError(w.Header(), e)
	httpapi.WritePlain(w, r, e)
}

// authorizeAgent reports why a native agent's handshake may not claim
// name with the access rules it asks for (with the registration result it
// counts as), or nil: a name that is a DNS label, and under a token
// policy a token granted serve on /expose/NAME (whose conditions, if any,
// the rules meet); without a policy, unless AnonymousAgents, an agent on
// this host (not through a proxy that is not trusted) that no web page
// runs.
func (s *Service) authorizeAgent(r *http.Request, name string, rules []auth.Rule) (result string, err *httpapi.Error) {
	switch {
	case name == "":
		return "malformed", httpapi.Errorf(http.StatusBadRequest, "agent name missing: connect to %s?%s=NAME", AgentPath, AgentNameParam)
	case !validName(name):
		return "malformed", httpapi.Errorf(http.StatusBadRequest, "agent name %q: want 1 to 63 of a-z 0-9 - (a DNS label, not shaped like a 52-character brickchain id)", name)
	}
	if s.policy.Enabled() {
		ok, unmet := s.policy.AllowUsing(r, auth.Serve, "/expose/"+name, rules)
		switch {
		case ok:
			return "", nil
		case unmet != "":
			return "forbidden", httpapi.Errorf(http.StatusForbidden, "the grant of serve on /expose/%s %s: change the agent's access rules", name, unmet)
		}
		if _, ok := auth.FindIn(r).Secret(); !ok {
			return "unauthorized", httpapi.Errorf(http.StatusUnauthorized, "agent needs a token granted serve on /expose/%s", name)
		}
		return "forbidden", httpapi.Errorf(http.StatusForbidden, "token is not granted serve on /expose/%s", name)
	}
	if s.opts.AnonymousAgents {
		return "", nil
	}
	switch {
	case !ratelimit.FromThisHost(r, s.trusted):
		// Also a handshake that a proxy on this host passed on: a trusted
		// proxy names its client, another is refused, since its client
		// may be anywhere.
		return "forbidden", httpapi.Errorf(http.StatusForbidden, "this server takes agents only from its own host (not through a proxy it does not trust): configure --token-file, or --expose-anonymous-agents")
	case len(r.Header.Values("Origin")) > 0:
		// A web page in a browser on this host passes the loopback rule
		// (websockets are not bound by the same-origin policy). Browsers
		// always send Origin on a websocket handshake; the native agent
		// never does.
		return "forbidden", httpapi.Errorf(http.StatusForbidden, "this server takes agents from its own host only without an Origin header (web pages may not claim names): configure --token-file, or --expose-anonymous-agents")
	}
	return "", nil
}

// nativeTransport carries the native agents (`postern expose`,
// client.Expose): each is one websocket carrying a yamux session on which
// the server opens one stream per HTTP connection to the agent. Its
// backend on the hub writes plain requests (no body, no upgrade) on
// streams itself (direct.go), and hands the others to an http.Transport
// whose DialContext opens a stream, so keep-alive, streaming bodies and
// 101 upgrades pass through the hub's reverse proxy untouched.
type nativeTransport struct {
	hub       *relay.Hub
	keepAlive time.Duration
	window    int
	log       *slog.Logger
	count     transportCounters

	ctx    context.Context // ends at shutdown: agent connections stop
	cancel context.CancelFunc
	live   live.Set[*nativeAgent]
}

func newNativeTransport(hub *relay.Hub, o Options, log *slog.Logger, count transportCounters) *nativeTransport {
	t := &nativeTransport{hub: hub, keepAlive: o.AgentKeepAlive, window: o.StreamWindow, log: log, count: count}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t
}

// errAgentFailed answers a request that came for an agent whose
// connection failed while it was being set up.
var errAgentFailed = errors.New("the agent's connection failed as it was set up")

// nativeAgent is one agent connection: a websocket carrying a yamux
// session, and what users reach it through (its binding).
type nativeAgent struct {
	name  string
	be    *agentBackend       // HTTP agents: the backend on the hub
	reg   *relay.Registration // of be
	ready chan struct{}       // closed once sess is set, or the setup failed

	mu     sync.Mutex
	ws     *websocket.Conn
	sess   *yamux.Session // nil until ready; stays nil when the setup failed
	closed bool
}

// binding is what users reach a native agent through while it is
// connected: its backend on the hub (HTTP), or a public TCP port.
type binding interface {
	// attach binds a, before the handshake is answered (a user who comes
	// once the agent reports ready finds it), and returns the public URL;
	// an error refuses the agent.
	attach(a *nativeAgent) (public string, err *httpapi.Error)
	// detach unbinds a, once it is gone or failed to come up.
	detach(a *nativeAgent)
}

// hubBinding binds an HTTP agent: its backend on the hub.
type hubBinding struct {
	t      *nativeTransport
	public string
	acc    *access
}

func (b hubBinding) attach(a *nativeAgent) (string, *httpapi.Error) {
	a.be = &agentBackend{direct: newDirectTransport(a.open), tr: b.t.backend(a)}
	var rt http.RoundTripper = a.be
	if len(b.acc.rules()) > 0 {
		rt = guarded{rt: a.be, acc: b.acc, count: b.t.count}
	}
	a.reg = b.t.hub.Register(a.name, rt)
	return b.public, nil
}

func (b hubBinding) detach(a *nativeAgent) {
	a.reg.Close()
	a.be.close()
}

// serve runs one agent that may claim name, users reaching it through b
// (acc: the access rules it asked for).
// The handshake order matters: the agent reports itself ready as soon as
// it has the handshake's answer, so the name is bound before that answer
// is written; a request arriving in between waits in DialContext for the
// session instead of getting 502.
func (t *nativeTransport) serve(w http.ResponseWriter, r *http.Request, name string, b binding, acc *access) {
	a := &nativeAgent{name: name, ready: make(chan struct{})}
	if !t.live.Add(a) {
		refuseAgent(w, r, errClosing)
		return
	}
	defer t.live.Remove(a)
	public, err := b.attach(a)
	if err != nil {
		close(a.ready)
		t.count.Registration("refused")
		refuseAgent(w, r, err)
		return
	}
	w.Header().Set(PublicURLHeader, public)
	if rules := acc.asked.Rules(); len(rules) > 0 {
		w.Header().Set(muxconn.EnforcedHeader, strings.Join(rules, " "))
	}
	conn, ok := t.accept(w, r, a)
	close(a.ready)
	if !ok {
		b.detach(a)
		return
	}
	t.count.Registration("ok")
	t.count.Agents(1)
	t.log.Info("expose agent connected", "name", name, "remote", r.RemoteAddr, "url", public, "access", acc.String())
	select {
	case <-a.session().CloseChan():
	case <-t.ctx.Done():
	}
	b.detach(a)
	t.count.Agents(-1)
	a.close()
	t.log.Info("expose agent disconnected", "name", name, "remote", r.RemoteAddr, "cause", causeOf(conn))
}

// accept answers the handshake and starts the yamux session, in which
// the server is the client (it opens the streams). It reports whether
// the agent is up; on false everything it opened is closed.
func (t *nativeTransport) accept(w http.ResponseWriter, r *http.Request, a *nativeAgent) (net.Conn, bool) {
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return nil, false
	}
	ws.SetReadLimit(muxconn.ReadLimit())
	conn := muxconn.Conn(t.ctx, ws)
	sess, err := yamux.Client(conn, muxconn.Config(t.keepAlive, t.window))
	if err != nil {
		ws.CloseNow()
		return nil, false
	}
	if !a.set(ws, sess) {
		sess.Close()
		ws.CloseNow()
		return nil, false
	}
	return conn, true
}

// backend is the agent's http.Transport, whose connections are streams
// of the agent's session: its RoundTripper on the hub for the requests
// the direct path (direct.go) does not carry.
func (t *nativeTransport) backend(a *nativeAgent) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			st, err := a.open(ctx)
			if err != nil {
				return nil, err
			}
			return st, nil
		},
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		ExpectContinueTimeout: time.Second,
		WriteBufferSize:       32 << 10,
		ReadBufferSize:        32 << 10,
	}
}

// open opens a stream to the agent, once its session is up.
func (a *nativeAgent) open(ctx context.Context) (*yamux.Stream, error) {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	sess := a.session()
	if sess == nil {
		return nil, errAgentFailed
	}
	st, err := sess.OpenStream()
	if errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrRemoteGoAway) {
		// Closed, or the agent stopping (its GoAway arrives before its
		// close), before serve unbound it: another agent of the name may
		// take it.
		return nil, fmt.Errorf("%w: %w", relay.ErrBackendGone, err)
	}
	return st, err
}

// close refuses new agents, closes every agent's session and stops the
// handlers (see wait).
func (t *nativeTransport) close() {
	t.live.Close((*nativeAgent).close)
	t.cancel()
}

// wait waits for the agent handlers.
func (t *nativeTransport) wait() { t.live.Wait() }

// set records the connection; false when the agent was closed meanwhile.
func (a *nativeAgent) set(ws *websocket.Conn, sess *yamux.Session) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.ws, a.sess = ws, sess
	return true
}

// session returns the agent's session (nil until it is up, and when its
// setup failed).
func (a *nativeAgent) session() *yamux.Session {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sess
}

func (a *nativeAgent) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.sess != nil {
		a.sess.Close()
	}
	if a.ws != nil {
		a.ws.CloseNow()
	}
}

// causeOf names why an agent's connection ended, for the log.
func causeOf(conn net.Conn) string {
	if err := muxconn.Cause(conn); err != nil {
		return err.Error()
	}
	return "closed"
}
