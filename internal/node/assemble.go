package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/certs"
	"github.com/postern/postern/internal/channels"
	"github.com/postern/postern/internal/cluster"
	"github.com/postern/postern/internal/expose"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/inbox"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/ratelimit"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/gcr"
	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/tunnel"
)

// A part is what one step of the assembly built, as the node runs it:
// start, when the node begins to serve (it knows its address then), and
// stop, at shutdown (or when a later step fails). Either may be nil. stop
// is idempotent and drains: it refuses new work, lets what is in flight
// finish until its context ends, then cuts the rest and waits for its
// goroutines.
type part struct {
	name  string
	start func()
	stop  func(context.Context) error
}

// A step builds one part.
type step struct {
	name  string
	build func() (part, error)
}

// assembly is the node's one ordered list of parts. New builds them in
// this order, Serve starts them in this order, and Shutdown stops them in
// the reverse, so the list reads bottom up as the drain:
//
//   - membership: leave the node directory first, so no node sends
//     anything new here;
//   - expose: its hub drains the requests in flight while the agents that
//     answer them are still connected, then the agents go;
//   - inbox, tunnels: nothing of their own to stop;
//   - queue: waiting long-polls are answered;
//   - relay: its hub drains the relays in flight while the listener is
//     still open (relay clients keep posting chunks), then parked polls
//     are answered;
//   - channels: subscriptions end (websockets close with 1001, event
//     streams get "event: end") and the websocket sessions are waited
//     for, which http.Server does not do for hijacked connections;
//   - http: the listener closes and the requests in progress finish;
//   - certs: the wildcard certificate's renewal stops;
//   - ops listener, then the store, closed last.
//
// Each capability is built the same way, New(core, Options, Deps), and
// mounts its routes on the one table the http step made. A core that
// serves one capability is handed to it and belongs to it from then on (a
// relay hub to relay or expose, the broker to channels: the capability's
// Shutdown drains it first); the queue serves three (tunnels, inbox,
// expose's mandate ledger) and is a part of its own.
func (n *Node) assembly() []step {
	return []step{
		{"store", n.openStore},
		{"cluster", n.joinCluster},
		{"ops listener", n.listenOps},
		{"certs", n.buildCerts},
		{"http", n.buildHTTP},
		{"channels", n.buildChannels},
		{"relay", n.buildRelay},
		{"queue", n.buildQueue},
		{"tunnels", n.buildTunnels},
		{"inbox", n.buildInbox},
		{"expose", n.buildExpose},
		{"ops", n.buildOps},
		{"membership", n.buildMembership},
	}
}

func (n *Node) openStore() (part, error) {
	st, err := OpenStore(n.cfg.Store, StoreOptions{
		Logger:            n.log,
		RedisWaitReplicas: n.cfg.RedisWaitReplicas,
		RedisWaitTimeout:  n.cfg.RedisWaitTimeout,
	})
	if err != nil {
		return part{}, err
	}
	n.store = st
	return part{stop: func(context.Context) error { return st.Close() }}, nil
}

// joinCluster settles who this node is among those sharing the engine
// (its id and advertised address, its node directory, its cluster keys)
// and with it the Deps every later part gets.
func (n *Node) joinCluster() (part, error) {
	dir := n.cfg.Directory
	if dir == nil {
		dir, _ = n.store.(store.Directory)
	}
	n.deps = capability.Deps{
		Registry:       n.registry,
		Logger:         n.log,
		Policy:         n.cfg.Policy,
		Directory:      dir,
		TrustedProxies: n.cfg.TrustedProxies,
	}
	var err error
	if n.members, err = newMembership(n.cfg, n.store, n.deps); err != nil {
		return part{}, err
	}
	if n.cfg.ClusterSecret != "" {
		if n.deps.Cluster, err = cluster.New(cluster.Options{Secret: n.cfg.ClusterSecret, Node: n.members.self().ID}); err != nil {
			return part{}, err
		}
	} else if dir != nil && !n.cfg.ClusterInsecure {
		return part{}, errNoClusterSecret
	}
	return part{}, nil
}

// buildHTTP makes the route table (behind the rate limits), the guards in
// front of it, and the HTTP server; the capabilities mount on the table
// next. Its stop closes the listener and waits for the requests in
// progress, after every capability drained.
func (n *Node) buildHTTP() (part, error) {
	tlsConfig := n.tls
	limiter, err := ratelimit.New(n.cfg.RateLimit, n.deps)
	if err != nil {
		return part{}, err
	}
	forwarding := n.deps.Directory != nil
	n.routes = httpapi.NewRoutes(limiter.Wrap)
	n.routes.Add(httpapi.Route{Name: "/health*", When: underHealth, Handler: httpapi.Handle(healthOK, nil)})
	n.marks = newMarkGuard(n.deps.Cluster, forwarding, n.deps)
	n.gate = newConnGate(resolveConnCaps(n.cfg.MaxConnections, n.cfg.MaxConnectionsPerAddr, forwarding), n.deps)
	n.members.onLive = n.gate.setNodes
	n.metrics = httpapi.NewMetrics(n.deps)
	n.handler = n.metrics.Wrap(n.gate.wrap(n.marks.wrap(n.routes), n.routes.Ops))
	// HTTP/2 without TLS (prior knowledge), as the original relay served
	// for gRPC clients, next to HTTP/1.1; with TLS, HTTP/2 by ALPN too.
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	if tlsConfig != nil {
		protocols.SetHTTP2(true)
	}
	n.http = &http.Server{
		TLSConfig:         tlsConfig,
		Handler:           n.handler,
		Protocols:         protocols,
		ReadHeaderTimeout: n.cfg.ReadHeaderTimeout,
		IdleTimeout:       n.cfg.IdleTimeout,
		MaxHeaderBytes:    n.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		ConnContext:       connContext,
		ConnState:         connState,
	}
	return part{stop: func(ctx context.Context) error {
		var err error
		if err = n.http.Shutdown(ctx); err != nil {
			n.http.Close()
		}
		n.gate.wait() // refusals being answered end within a second
		return err
	}}, nil
}

// buildCerts makes the TLS configuration of the listener: a certificate
// file's, or automatic HTTPS's. The latter asks the expose capability
// (built later, asked only once the node serves) whether an agent is
// connected before it has a certificate issued for the agent's name.
func (n *Node) buildCerts() (part, error) {
	ac := n.cfg.ACME
	if !ac.Enabled() {
		var err error
		n.tls, err = loadTLS(n.cfg.TLSCertFile, n.cfg.TLSKeyFile)
		return part{}, err
	}
	if n.cfg.TLSCertFile != "" || n.cfg.TLSKeyFile != "" {
		return part{}, errors.New("--acme-domain and --tls-cert are two ways to get certificates: choose one")
	}
	if ac.Dir == "" {
		ac.Dir = DefaultACMEDir(n.cfg.Store)
	}
	ac.ExposeDomain = n.cfg.Expose.Domain
	ac.Connected = func(ctx context.Context, name string) (bool, error) { return n.expose.Connected(ctx, name) }
	m, err := certs.New(ac, n.deps)
	if err != nil {
		return part{}, err
	}
	if _, port, _ := net.SplitHostPort(n.cfg.Listen); port != "443" {
		n.log.Warn("ACME: the CA checks names on port 443; listen there (--listen :443) or forward 443 to this listener as plain TCP", "listen", n.cfg.Listen)
	}
	n.certs, n.tls = m, m.TLSConfig()
	return part{start: m.Start, stop: m.Shutdown}, nil
}

// DefaultACMEDir is where automatic HTTPS keeps its account key and
// certificates when no directory is given: "acme" in the file engine's
// data directory (its default one for other engines).
func DefaultACMEDir(storeURL string) string {
	dir, ok := strings.CutPrefix(storeURL, "file:")
	if !ok || dir == "" {
		dir = filestore.DefaultDir
	}
	return filepath.Join(dir, "acme")
}

// loadTLS returns the TLS configuration of a certificate and key file,
// nil without either.
func loadTLS(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS needs both a certificate and a key file")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// buildChannels builds the broker and the channels capability that owns
// it.
func (n *Node) buildChannels() (part, error) {
	var err error
	if n.broker, err = broker.New(n.store, n.cfg.Broker, n.deps); err != nil {
		return part{}, fmt.Errorf("broker core: %w", err)
	}
	if n.channels, err = channels.New(n.broker, n.cfg.Channels, n.deps); err != nil {
		n.broker.Shutdown(context.Background())
		return part{}, err
	}
	n.channels.Mount(n.routes)
	return part{stop: n.channels.Shutdown}, nil
}

// newHub builds a relay hub for one capability, which will own it; this
// node's advertised address is set when it starts serving.
func (n *Node) newHub(o relay.Options) (*relay.Hub, func(), error) {
	hub, err := relay.New(o, n.deps)
	if err != nil {
		return nil, nil, err
	}
	return hub, func() { hub.SetAdvertiseURL(n.members.self().Addr) }, nil
}

// buildRelay builds the relay hub and the long-poll front door that owns
// it.
func (n *Node) buildRelay() (part, error) {
	hub, start, err := n.newHub(relay.DefaultOptions("relay"))
	if err != nil {
		return part{}, err
	}
	if n.relay, err = gcr.New(hub, n.cfg.Relay, n.deps); err != nil {
		hub.Shutdown(context.Background()) // stops its directory goroutine
		return part{}, err
	}
	n.relayHub = hub
	n.relay.Mount(n.routes)
	return part{start: start, stop: n.relay.Shutdown}, nil
}

func (n *Node) buildQueue() (part, error) {
	var err error
	if n.queue, err = queue.New(n.store, n.cfg.Queue, n.deps); err != nil {
		return part{}, fmt.Errorf("queue core: %w", err)
	}
	return part{stop: n.queue.Shutdown}, nil
}

func (n *Node) buildTunnels() (part, error) {
	t, err := tunnel.New(n.queue, n.cfg.Tunnel, n.deps)
	if err != nil {
		return part{}, err
	}
	t.Mount(n.routes)
	return part{}, nil
}

func (n *Node) buildInbox() (part, error) {
	ib, err := inbox.New(n.queue, n.cfg.Inbox, n.deps)
	if err != nil {
		return part{}, err
	}
	ib.Mount(n.routes)
	return part{}, nil
}

// buildExpose builds the expose hub and the capability that owns it; the
// hub's directory entries live as long as a Brickchain registration.
func (n *Node) buildExpose() (part, error) {
	eo := n.cfg.Expose
	eo.Brickchain.Mandates = n.queue
	if eo.TCPHost == "" {
		// Raw TCP ports listen where the node does.
		eo.TCPHost, _, _ = net.SplitHostPort(n.cfg.Listen)
	}
	if err := eo.Validate(); err != nil {
		return part{}, err
	}
	ho := relay.DefaultOptions("expose")
	ho.RegisterTTL = eo.Brickchain.RegistrationTTL
	hub, start, err := n.newHub(ho)
	if err != nil {
		return part{}, err
	}
	if n.expose, err = expose.New(hub, eo, n.deps); err != nil {
		hub.Shutdown(context.Background())
		return part{}, err
	}
	n.expose.Mount(n.routes)
	return part{start: start, stop: n.expose.Shutdown}, nil
}

func (n *Node) buildMembership() (part, error) {
	return part{start: n.members.start, stop: func(context.Context) error {
		n.members.stop()
		return nil
	}}, nil
}
