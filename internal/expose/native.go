package expose

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/expose/muxconn"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/ratelimit"
	"github.com/postern/postern/internal/relay"
)

// errAgentFailed answers a request that came for an agent whose
// connection failed while it was being set up.
var errAgentFailed = errors.New("the agent's connection failed as it was set up")

// nativeAgent is one `postern expose` connection: a websocket carrying a
// yamux session on which the server opens one stream per HTTP connection
// to the agent.
type nativeAgent struct {
	name   string
	mu     sync.Mutex
	ws     *websocket.Conn
	sess   *yamux.Session
	closed bool
}

// set records the connection; false when the agent was closed meanwhile.
func (a *nativeAgent) set(ws *websocket.Conn, sess *yamux.Session) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ws, a.sess = ws, sess
	return !a.closed
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

// serveAgent accepts a native agent on /agent?name=NAME.
func (s *Service) serveAgent(w http.ResponseWriter, r *http.Request) {
	httpapi.SetRoute(r, "expose.agent")
	fail := func(result string, e *httpapi.Error) {
		s.m.registration(transportNative, result)
		httpapi.WritePlain(w, r, e)
	}
	name := strings.ToLower(r.URL.Query().Get(AgentNameParam))
	switch {
	case name == "":
		fail("malformed", httpapi.Errorf(http.StatusBadRequest, "agent name missing: connect to %s?%s=NAME", AgentPath, AgentNameParam))
		return
	case !validName(name):
		fail("malformed", httpapi.Errorf(http.StatusBadRequest, "agent name %q: want 1 to 63 of a-z 0-9 - (a DNS label, not shaped like a 52-character brickchain id)", name))
		return
	}
	if s.opts.Policy.Enabled() {
		if !s.opts.Policy.Allow(r, auth.Serve, "/expose/"+name) {
			if _, ok := auth.FindIn(r).Secret(); !ok {
				fail("unauthorized", httpapi.Errorf(http.StatusUnauthorized, "agent needs a token granted serve on /expose/%s", name))
			} else {
				fail("forbidden", httpapi.Errorf(http.StatusForbidden, "token is not granted serve on /expose/%s", name))
			}
			return
		}
	} else if !s.opts.AnonymousAgents {
		switch {
		case !ratelimit.FromThisHost(r, s.opts.TrustedProxies):
			// Also a handshake that a proxy on this host passed on: a
			// trusted proxy names its client, another is refused, since
			// its client may be anywhere.
			fail("forbidden", httpapi.Errorf(http.StatusForbidden, "this server takes agents only from its own host (not through a proxy it does not trust): configure --token-file, or --expose-anonymous-agents"))
			return
		case len(r.Header.Values("Origin")) > 0:
			// A web page in a browser on this host passes the loopback
			// rule (websockets are not bound by the same-origin policy).
			// Browsers always send Origin on a websocket handshake; the
			// native agent never does.
			fail("forbidden", httpapi.Errorf(http.StatusForbidden, "this server takes agents from its own host only without an Origin header (web pages may not claim names): configure --token-file, or --expose-anonymous-agents"))
			return
		}
	}
	a := &nativeAgent{name: name}
	if !s.track(func() { s.natives[a] = struct{}{} }) {
		httpapi.WritePlain(w, r, errClosing)
		return
	}
	defer func() {
		s.mu.Lock()
		delete(s.natives, a)
		s.mu.Unlock()
		s.wg.Done()
	}()
	public := s.publicURL(r, name)
	w.Header().Set(PublicURLHeader, public)
	// The agent reports itself ready as soon as it has the handshake's
	// answer, so the name is registered before that answer is written:
	// a request arriving in between waits for the session instead of
	// getting 502. sess is set before ready is closed.
	var sess *yamux.Session
	ready := make(chan struct{})
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			select {
			case <-ready:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if sess == nil {
				return nil, errAgentFailed
			}
			st, err := sess.Open()
			if errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrRemoteGoAway) {
				// Closed, or the agent stopping (its GoAway arrives
				// before its close), before serveAgent closed the
				// registration: another agent of the name may take it.
				return nil, fmt.Errorf("%w: %w", relay.ErrBackendGone, err)
			}
			return st, err
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
	reg := s.hub.Register(name, tr)
	abort := func() {
		close(ready)
		reg.Close()
		tr.CloseIdleConnections()
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		abort()
		return
	}
	ws.SetReadLimit(muxconn.ReadLimit())
	conn := muxconn.Conn(s.ctx, ws)
	// The server opens the streams: it is yamux's client.
	ys, err := yamux.Client(conn, muxconn.Config(s.opts.AgentKeepAlive, s.opts.StreamWindow))
	if err != nil {
		ws.CloseNow()
		abort()
		return
	}
	if !a.set(ws, ys) {
		a.close()
		abort()
		return
	}
	sess = ys
	close(ready)
	s.m.registration(transportNative, "ok")
	s.m.agents.WithLabelValues(transportNative).Inc()
	s.log.Info("expose agent connected", "name", name, "remote", r.RemoteAddr, "url", public)
	select {
	case <-sess.CloseChan():
	case <-s.ctx.Done():
	}
	reg.Close()
	s.m.agents.WithLabelValues(transportNative).Dec()
	tr.CloseIdleConnections()
	a.close()
	s.log.Info("expose agent disconnected", "name", name, "remote", r.RemoteAddr, "cause", causeOf(conn))
}
