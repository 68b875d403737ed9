// Package expose owns postern's expose capability: services behind a NAT
// published through agents that dial out to postern. It is a front door on
// the relay core (internal/relay) with two agent transports:
//
//   - Brickchain agents (Brickchain/go-proxy.v1 clients) connect a
//     websocket to /proxy/subscribe, register with a signed mandate token
//     and answer JSON frames (wire format: internal/expose/brickchain).
//     Each registered client id is a relay.Hub backend whose RoundTripper
//     speaks the frames, for plain HTTP. Websockets to them are relayed
//     message by message, as the protocol dictates, by this package.
//   - Native agents (`postern expose`, client.Expose) connect a websocket
//     to /agent?name=NAME and multiplex streams over it with yamux. Their
//     backend is an http.Transport whose DialContext opens a stream, so
//     streaming bodies, keep-alive and 101 upgrades pass through
//     untouched.
//
// Users reach an agent by Host (NAME.<domain>, lowercased, port ignored,
// wired by internal/server in front of the path router) or by path
// (/proxy/request/NAME/<path>). Two agents with one name share its work
// (the hub picks the one with the fewest requests in flight), which is
// also what lets an agent reconnect before its old connection is noticed
// dead.
package expose

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/version"
)

// Routes of the expose front door.
const (
	SubscribePath     = "/proxy/subscribe"
	RequestPathPrefix = "/proxy/request/"
	AgentPath         = "/agent"
	// PublicURLHeader, on the answer to a native agent's websocket
	// handshake, is the URL users reach the agent at.
	PublicURLHeader = "X-Postern-Public-Url"
	// AgentNameParam is the query parameter naming a native agent.
	AgentNameParam = "name"
)

// Service is the expose capability of one node.
type Service struct {
	opts     Options
	hub      *relay.Hub
	log      *slog.Logger
	m        *metrics
	limiter  *clientLimiter
	mandates *mandateLedger

	ctx    context.Context // ends at shutdown: agent connections stop
	cancel context.CancelFunc

	mu      sync.Mutex
	closing bool
	bc      map[string][]*bcConn // local brickchain sockets by client id
	conns   map[*bcConn]struct{}
	natives map[*nativeAgent]struct{}
	wg      sync.WaitGroup // agent connection handlers

	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error
}

// New returns the capability on hub (whose namespace should be "expose").
// The service owns the hub from then on: Shutdown shuts it down.
func New(hub *relay.Hub, opts Options) (*Service, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		opts:         opts,
		hub:          hub,
		log:          opts.Logger,
		m:            newMetrics(opts.Metrics),
		limiter:      newClientLimiter(opts.ClientRate, opts.ClientRatePeriod, opts.Now),
		mandates:     &mandateLedger{q: opts.Mandates, max: DefaultMaxMandates},
		ctx:          ctx,
		cancel:       cancel,
		bc:           make(map[string][]*bcConn),
		conns:        make(map[*bcConn]struct{}),
		natives:      make(map[*nativeAgent]struct{}),
		shutdownDone: make(chan struct{}),
	}
	return s, nil
}

// Domain returns the configured expose domain ("" when none).
func (s *Service) Domain() string { return s.opts.Domain }

// Hub returns the relay hub the service serves through.
func (s *Service) Hub() *relay.Hub { return s.hub }

// Mount registers the path routes: the agents' endpoints and
// /proxy/request/NAME/.
func (s *Service) Mount(mux *httpapi.Router) {
	mux.Handle(SubscribePath, http.HandlerFunc(s.serveSubscribe))
	mux.Handle(AgentPath, http.HandlerFunc(s.serveAgent))
	mux.Handle(RequestPathPrefix, http.HandlerFunc(s.serveRequestPath))
}

// hostOf returns r's Host lowercased, without port and trailing dot.
func hostOf(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// AgentHost reports whether hostport is an agent's host, NAME.<domain>,
// every path of which ServeHost serves.
func (s *Service) AgentHost(hostport string) bool {
	if s.opts.Domain == "" {
		return false
	}
	name, ok := strings.CutSuffix(hostOf(hostport), "."+s.opts.Domain)
	return ok && name != ""
}

// ServeHost serves r when its Host is the expose domain's business and
// reports whether it did: NAME.<domain> goes to agent NAME with its path
// unchanged; GET / on the bare domain answers the version, as the
// original's server did at its root (other paths of the bare domain, and
// every other host, are left to the path routes, so postern's own page at
// / stays where it is on other hosts).
func (s *Service) ServeHost(w http.ResponseWriter, r *http.Request) bool {
	if s.opts.Domain == "" {
		return false
	}
	host := hostOf(r.Host)
	if host == s.opts.Domain {
		if r.URL.Path == "/" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			httpapi.SetRoute(r, "expose.version")
			w.Header().Set("Content-Type", "text/plain")
			if r.Method == http.MethodGet {
				fmt.Fprintf(w, "postern/%s", version.Version())
			}
			return true
		}
		return false
	}
	if !s.AgentHost(r.Host) {
		return false
	}
	name := strings.TrimSuffix(host, "."+s.opts.Domain)
	httpapi.SetRoute(r, "expose.host")
	s.serveName(w, r, name, r.URL.Path, r.URL.RawPath, r.URL.RawQuery)
	return true
}

// serveRequestPath serves /proxy/request/NAME/<path>.
func (s *Service) serveRequestPath(w http.ResponseWriter, r *http.Request) {
	httpapi.SetRoute(r, "expose.request")
	rest := strings.TrimPrefix(r.URL.Path, RequestPathPrefix)
	name, p, _ := strings.Cut(rest, "/")
	rawPath := ""
	if r.URL.RawPath != "" {
		if raw, ok := strings.CutPrefix(r.URL.RawPath, RequestPathPrefix); ok {
			if _, rp, ok := strings.Cut(raw, "/"); ok {
				rawPath = "/" + rp
			}
		}
	}
	s.serveName(w, r, strings.ToLower(name), "/"+p, rawPath, r.URL.RawQuery)
}

// Answers of the user side.
var (
	errTooMany   = &httpapi.Error{Status: http.StatusTooManyRequests, Message: "Too many requests"}
	errForbidden = &httpapi.Error{Status: http.StatusForbidden, Message: "forbidden: this request needs a token granted call on the agent"}
)

func noAgent(name string) *httpapi.Error {
	return httpapi.Errorf(http.StatusBadGateway, "no agent is connected as %q", name)
}

// serveName relays r to agent name.
func (s *Service) serveName(w http.ResponseWriter, r *http.Request, name, path, rawPath, rawQuery string) {
	isBC := brickchain.IsClientID(name)
	transport := transportNative
	if isBC {
		transport = transportBrickchain
	}
	if !validName(name) && !isBC {
		s.m.request(transportAny, "no_agent")
		httpapi.WritePlain(w, r, noAgent(name))
		return
	}
	if s.opts.Policy.Enabled() && !s.opts.Policy.Allow(r, auth.Call, "/expose/"+name) {
		s.m.request(transport, "forbidden")
		httpapi.WritePlain(w, r, errForbidden)
		return
	}
	// Counted on every node, forwarded or not: the node holding the agent
	// sees every request for it, so its count is the whole.
	if isBC && !s.limiter.allow(name) {
		s.m.request(transport, "rate_limited")
		httpapi.WritePlain(w, r, errTooMany)
		return
	}
	if isBC && isWebsocketUpgrade(r.Header) {
		if c := s.pickBC(name); c != nil {
			hdr := r.Header.Clone()
			hdr.Del(relay.ForwardedHeader)
			c.serveWebsocket(w, r, name, path, s.opts.Policy.Strip(hdr, rawQuery), hdr)
			return
		}
	}
	t := relay.Target{Name: name, Path: path, RawPath: rawPath, RawQuery: rawQuery, NoBackend: noAgent, Local: s.stripToken}
	if isBC {
		t.MaxRequestBodyBytes = s.opts.MaxRequestBytes
	}
	s.hub.Serve(w, r, t)
}

// stripToken removes the postern tokens a user presented from a request
// about to reach an agent on this node (a node forwarding the request to
// another leaves them, for that node to authorize it), so a service never
// sees its callers' tokens; credentials of its own pass.
func (s *Service) stripToken(out *http.Request) {
	out.URL.RawQuery = s.opts.Policy.Strip(out.Header, out.URL.RawQuery)
}

// validName reports whether name is a native agent name: a DNS label
// (1 to 63 of a-z 0-9 -, not starting or ending with -) that is not shaped
// like a brickchain client id, which only a signed registration may claim.
func validName(name string) bool {
	if len(name) == 0 || len(name) > 63 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return !brickchain.IsClientID(name)
}

// isWebsocketUpgrade reports whether h asks for a websocket: Connection is
// parsed as a token list (browsers send "keep-alive, Upgrade").
func isWebsocketUpgrade(h http.Header) bool {
	return hasToken(h["Connection"], "upgrade") && hasToken(h["Upgrade"], "websocket")
}

func hasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// publicURL is where users reach agent name, as seen from request r.
func (s *Service) publicURL(r *http.Request, name string) string {
	scheme, hostport := "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	if s.opts.BaseURL != "" {
		if u, err := url.Parse(s.opts.BaseURL); err == nil {
			scheme, hostport = u.Scheme, u.Host
		}
	}
	if s.opts.Domain == "" {
		return scheme + "://" + hostport + RequestPathPrefix + name + "/"
	}
	port := ""
	if _, p, err := net.SplitHostPort(hostport); err == nil && !(scheme == "http" && p == "80") && !(scheme == "https" && p == "443") {
		port = ":" + p
	}
	return scheme + "://" + name + "." + s.opts.Domain + port
}

// baseURL is what brickchain mandate tokens must name: the configured base
// URL, or the scheme and Host the agent connected with.
func (s *Service) baseURL(r *http.Request) string {
	if s.opts.BaseURL != "" {
		return s.opts.BaseURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// errClosing refuses agents during shutdown.
var errClosing = httpapi.ErrShuttingDown

// track adds an agent connection handler; false when shutting down.
func (s *Service) track(add func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	add()
	s.wg.Add(1)
	return true
}

// pickBC returns a local brickchain socket holding id.
func (s *Service) pickBC(id string) *bcConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.bc[id]; len(l) > 0 {
		return l[0]
	}
	return nil
}

func (s *Service) addBC(id string, c *bcConn) {
	s.mu.Lock()
	s.bc[id] = append(s.bc[id], c)
	s.mu.Unlock()
	s.m.agents.WithLabelValues(transportBrickchain).Inc()
}

func (s *Service) removeBC(id string, c *bcConn) {
	s.mu.Lock()
	l := s.bc[id]
	for i, x := range l {
		if x == c {
			l = append(l[:i:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(s.bc, id)
	} else {
		s.bc[id] = l
	}
	s.mu.Unlock()
	s.m.agents.WithLabelValues(transportBrickchain).Dec()
}

// Shutdown drains the capability: the hub refuses new user requests and
// lets those in flight finish until ctx ends, then every agent connection
// is closed (brickchain agents with "going away") and their handlers are
// waited for. It is idempotent.
func (s *Service) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		defer close(s.shutdownDone)
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		err := s.hub.Shutdown(ctx)
		s.mu.Lock()
		conns := make([]*bcConn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		natives := make([]*nativeAgent, 0, len(s.natives))
		for a := range s.natives {
			natives = append(natives, a)
		}
		s.mu.Unlock()
		var closing sync.WaitGroup
		for _, c := range conns {
			closing.Go(c.goAway)
		}
		closing.Wait()
		for _, a := range natives {
			a.close()
		}
		s.cancel()
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = errors.Join(err, fmt.Errorf("expose: agent connections still closing: %w", ctx.Err()))
			// Every handler ends once its connection is closed, which
			// s.cancel did; do not hang on one that does not.
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				s.log.Error("expose: agent handlers did not stop")
			}
		}
		s.shutdownErr = err
	})
	<-s.shutdownDone
	return s.shutdownErr
}
