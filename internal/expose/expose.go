// Package expose owns postern's expose capability: services behind a NAT
// published through agents that dial out to postern. It is a front door on
// the relay core (internal/relay) with two agent transports:
//
//   - Brickchain agents (Brickchain/go-proxy.v1 clients) connect a
//     websocket to /proxy/subscribe, register with a signed mandate token
//     and answer JSON frames. The transport, wire format included, is
//     internal/expose/brickchain: each registered client id is a relay.Hub
//     backend whose RoundTripper speaks the frames, for plain HTTP, and
//     which relays websockets message by message, as the protocol
//     dictates.
//   - Native agents (`postern expose`, client.Expose) connect a websocket
//     to /agent?name=NAME and multiplex streams over it with yamux. Their
//     backend writes plain requests (no body, no upgrade) on streams
//     itself (direct.go) and hands the others to an http.Transport whose
//     DialContext opens a stream, so streaming bodies, keep-alive and 101
//     upgrades pass through untouched.
//
// A native agent may also carry raw connections instead of HTTP (raw.go):
// raw TCP on a public port of Options.TCPPorts (tcp.go), or TLS passed
// through whole by its server name NAME.<domain> on the node's own
// listener (sni.go, Service.Listener). Each user connection is one yamux
// stream, spliced on both ends with half-closes and resets passed on.
//
// Users reach an agent by Host (NAME.<domain>, lowercased, port ignored:
// a host route of the node's table) or by path (/proxy/request/NAME/<path>).
// This package is the front door for both: it authorizes users and
// agents, names agents' public URLs, and hands each request to the hub.
// Two agents with one name share its work (the hub picks the one with the
// fewest requests in flight), which is also what lets an agent reconnect
// before its old connection is noticed dead.
//
// The service owns its hub: the node builds it (namespace "expose") and
// hands it over; Shutdown drains it while the agents that answer its
// requests are still connected, then closes the agents.
package expose

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/capability"
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
	opts    Options
	hub     *relay.Hub
	policy  *auth.Policy
	trusted []netip.Prefix
	log     *slog.Logger
	m       *metrics
	bc      *brickchain.Transport
	native  *nativeTransport
	tcp     *tcpPorts // nil without Options.TCPPorts
	sni     *sniNames // nil without Options.Domain

	closing atomic.Bool // agents are refused

	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error
}

// New returns the capability on hub (whose namespace should be "expose"),
// which it owns from then on: Shutdown shuts it down.
func New(hub *relay.Hub, opts Options, deps capability.Deps) (*Service, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	s := &Service{
		opts:         opts,
		hub:          hub,
		policy:       deps.Policy,
		trusted:      deps.TrustedProxies,
		log:          deps.Log(),
		m:            newMetrics(deps),
		shutdownDone: make(chan struct{}),
	}
	var err error
	if s.bc, err = brickchain.NewTransport(hub, opts.Brickchain, deps, s.m.of(transportBrickchain)); err != nil {
		return nil, err
	}
	s.native = newNativeTransport(hub, opts, s.log, s.m.of(transportNative))
	s.tcp = newTCPPorts(s.opts, s.log, s.m)
	s.sni = newSNINames(s.opts, s.log, s.m)
	return s, nil
}

// Domain returns the configured expose domain ("" when none).
func (s *Service) Domain() string { return s.opts.Domain }

// Hub returns the relay hub the service serves through.
func (s *Service) Hub() *relay.Hub { return s.hub }

// Mount adds the agents' endpoints and /proxy/request/NAME/ to the node's
// table and, with a domain, two host routes: NAME.<domain> goes to agent
// NAME with its path unchanged, whatever the path; GET / on the bare
// domain answers the version, as the original's server did at its root
// (other paths of the bare domain, and every other host, are left to the
// path routes, so postern's own page at / stays where it is on other
// hosts).
func (s *Service) Mount(rt *httpapi.Routes) {
	rt.Handle(SubscribePath, http.HandlerFunc(s.serveSubscribe))
	rt.Handle(AgentPath, http.HandlerFunc(s.serveAgent))
	rt.Handle(RequestPathPrefix, http.HandlerFunc(s.serveRequestPath))
	if s.opts.Domain == "" {
		return
	}
	rt.Add(httpapi.Route{Name: "expose agent hosts", Host: s.agentHost, Handler: http.HandlerFunc(s.serveHost)})
	rt.Add(httpapi.Route{
		Name: "expose domain version", Host: func(h string) bool { return h == s.opts.Domain }, Pattern: "/",
		When:    func(r *http.Request) bool { return r.Method == http.MethodGet || r.Method == http.MethodHead },
		Handler: http.HandlerFunc(serveVersion),
	})
}

// serveSubscribe hands a Brickchain agent's websocket to its transport.
func (s *Service) serveSubscribe(w http.ResponseWriter, r *http.Request) {
	if s.closing.Load() {
		httpapi.SetRoute(w, "expose.subscribe")
		httpapi.WritePlain(w, r, errClosing)
		return
	}
	s.bc.ServeSubscribe(w, r, brickchain.Site{BaseURL: s.baseURL(r), Domain: s.opts.Domain})
}

// agentHost reports whether host (see httpapi.HostOf) is an agent's,
// NAME.<domain>.
func (s *Service) agentHost(host string) bool {
	name, ok := strings.CutSuffix(host, "."+s.opts.Domain)
	return ok && name != ""
}

// serveHost serves a request to NAME.<domain>: agent NAME, path unchanged.
func (s *Service) serveHost(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSuffix(httpapi.HostOf(r.Host), "."+s.opts.Domain)
	httpapi.SetRoute(w, "expose.host")
	s.serveName(w, r, name, r.URL.Path, r.URL.RawPath, r.URL.RawQuery)
}

// serveVersion answers GET / on the bare domain.
func serveVersion(w http.ResponseWriter, r *http.Request) {
	httpapi.SetRoute(w, "expose.version")
	w.Header().Set("Content-Type", "text/plain")
	if r.Method == http.MethodGet {
		fmt.Fprintf(w, "postern/%s", version.Version())
	}
}

// serveRequestPath serves /proxy/request/NAME/<path>.
func (s *Service) serveRequestPath(w http.ResponseWriter, r *http.Request) {
	httpapi.SetRoute(w, "expose.request")
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
	if s.policy.Enabled() && !s.policy.Allow(r, auth.Call, "/expose/"+name) {
		s.m.request(transport, "forbidden")
		httpapi.WritePlain(w, r, errForbidden)
		return
	}
	// Counted on every node, forwarded or not: the node holding the agent
	// sees every request for it, so its count is the whole.
	if isBC && !s.bc.Allow(name) {
		s.m.request(transport, "rate_limited")
		httpapi.WritePlain(w, r, errTooMany)
		return
	}
	r = s.withClient(r)
	t := relay.Target{Name: name, Path: path, RawPath: rawPath, RawQuery: rawQuery, NoBackend: noAgent, Local: s.stripToken}
	if isBC && httpapi.IsWebsocketUpgrade(r.Header) {
		if ws, ok := s.hub.Local(name).(websocketRelay); ok {
			ws.ServeWebsocket(w, r, t)
			return
		}
	}
	if isBC {
		t.MaxRequestBodyBytes = s.opts.Brickchain.MaxRequestBytes
	}
	s.hub.Serve(w, r, t)
}

// websocketRelay is a backend that relays websockets itself, message by
// message (a Brickchain agent: its wire carries messages, so the hub's
// byte stream cannot). The front door hands it the user's websocket when
// the agent is on this node.
type websocketRelay interface {
	ServeWebsocket(w http.ResponseWriter, r *http.Request, t relay.Target)
}

// stripToken removes the postern tokens a user presented from a request
// about to reach an agent on this node (a node forwarding the request to
// another leaves them, for that node to authorize it), so a service never
// sees its callers' tokens; credentials of its own pass. ClientHeader,
// postern's own, goes too.
func (s *Service) stripToken(out *http.Request) {
	out.URL.RawQuery = s.policy.Strip(out.Header, out.URL.RawQuery)
	out.Header.Del(ClientHeader)
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

// Shutdown drains the capability: new agents are refused, the hub refuses
// new user requests and lets those in flight finish until ctx ends while
// the agents that answer them are still connected; then every agent
// connection is closed (Brickchain agents with "going away") and their
// handlers are waited for. It is idempotent.
func (s *Service) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		defer close(s.shutdownDone)
		s.closing.Store(true)
		err := s.hub.Shutdown(ctx)
		var closing sync.WaitGroup
		closing.Go(s.bc.Close)
		closing.Go(s.native.close)
		if s.tcp != nil {
			closing.Go(s.tcp.close)
		}
		if s.sni != nil {
			closing.Go(s.sni.closeConns)
		}
		closing.Wait()
		s.shutdownErr = errors.Join(err, s.waitHandlers(ctx))
	})
	<-s.shutdownDone
	return s.shutdownErr
}

// waitHandlers waits for both transports' handlers until ctx ends; then
// it reports what is still closing and waits at most five seconds more
// (every handler ends once its connection is closed, which Shutdown did;
// it does not hang on one that does not).
func (s *Service) waitHandlers(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.bc.Wait()
		s.native.wait()
		if s.tcp != nil {
			s.tcp.wait()
		}
		if s.sni != nil {
			s.sni.wait()
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	err := fmt.Errorf("expose: agent connections still closing: %w", ctx.Err())
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.log.Error("expose: agent handlers did not stop")
	}
	return err
}
