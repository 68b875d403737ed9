// Package server assembles a postern node: it opens the storage engine,
// starts the cores, mounts every front door and the operations endpoints on
// one HTTP handler, and owns the order of a graceful shutdown.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/channels"
	"github.com/postern/postern/internal/cluster"
	"github.com/postern/postern/internal/expose"
	"github.com/postern/postern/internal/gcrrelay"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/inbox"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/ratelimit"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/tunnel"
	"github.com/postern/postern/internal/version"
	"github.com/postern/postern/internal/web"
)

// Defaults of the HTTP server.
const (
	DefaultListen            = ":8080"
	DefaultStore             = "file:" + filestore.DefaultDir
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
	// DefaultNodeTTL is how long a node stays listed in the node directory
	// after its last heartbeat; it beats every third of that.
	DefaultNodeTTL = 15 * time.Second
)

// Config is everything a node needs.
type Config struct {
	// Listen is the TCP address to serve on.
	Listen string
	// Store names the storage engine: "file:DIR" (durable, the default),
	// "memory", or an engine URL (see OpenStore).
	Store string
	// RedisWaitReplicas > 0 makes a write to Redis that stores a message
	// wait until that many replicas confirm it (WAIT), for at most
	// RedisWaitTimeout (zero: redisstore.DefaultWaitTimeout); unconfirmed
	// writes are answered 503. See redisstore.Options.WaitReplicas.
	RedisWaitReplicas int
	RedisWaitTimeout  time.Duration
	// ShutdownTimeout bounds the graceful drain.
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout bounds how long a client may take to send headers.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle keep-alive connections.
	IdleTimeout time.Duration
	// MaxHeaderBytes limits request headers.
	MaxHeaderBytes int
	// MaxConnections caps the client connections open at once (websockets,
	// streams and long-polls included); a connection beyond it is answered
	// 503 and closed, except that OpsConnections more are taken for
	// /healthz, /readyz and /metrics. Zero: derived from the process's
	// open-file limit (what is left after the descriptors the node keeps
	// for itself; half of that on a node that forwards). Negative: no cap.
	MaxConnections int
	// MaxConnectionsPerAddr caps the connections one client address (IPv6:
	// its /64) holds open; one more is answered 429 and closed. Through a
	// trusted proxy (RateLimit.TrustedProxies) the client is the one
	// X-Forwarded-For names, and its requests in progress are counted.
	// Zero: DefaultMaxConnectionsPerAddr (at most half of MaxConnections).
	// Negative: no cap.
	MaxConnectionsPerAddr int
	// OpsListen, when set, is the TCP address that serves the operational
	// endpoints (/metrics, /ops/*, the status page and its JSON, /readyz
	// with its reason) to whoever reaches it; the public address then
	// serves only /healthz and a /readyz without reason. Unset: the public
	// address serves them to requests granted ops, or without a token file
	// to clients on this host.
	OpsListen string
	// TokenFile, when set, names the scoped-token file (see internal/auth)
	// that every capability honours alongside its seed's own auth.
	TokenFile string
	// Policy is the parsed token file; New loads it from TokenFile when nil.
	Policy *auth.Policy

	// RateLimit limits requests per client address and per scoped token.
	RateLimit ratelimit.Options

	// NodeID names this node among those sharing the engine; empty means
	// the host name plus a random suffix.
	NodeID string
	// AdvertiseAddr is the base URL other nodes reach this one at
	// ("http://10.0.0.5:8080"); empty means the listen address (the host
	// name when listening on every interface).
	AdvertiseAddr string
	// NodeTTL is how long the node directory lists this node after a
	// heartbeat; zero means DefaultNodeTTL.
	NodeTTL time.Duration
	// ClusterSecret, shared by every node, signs the mark a node puts on
	// a request it forwards to another (internal/cluster); a mark that
	// does not verify is ignored. Nodes that forward (a store with a node
	// directory, such as Redis) need it, unless ClusterInsecure.
	ClusterSecret string
	// ClusterInsecure lets nodes forward to each other without a secret:
	// their marks prove nothing (the receiving node authorizes forwarded
	// requests as any other), so only where nothing but postern nodes can
	// reach them.
	ClusterInsecure bool
	// Directory is the node directory the relay hub uses; nil: the store
	// engine's, when it implements store.Directory (shared engines). Tests
	// set it to connect in-process nodes without a shared engine.
	Directory store.Directory

	Tunnel tunnel.Options
	Inbox  inbox.Options
	Relay  gcrrelay.Options
	Expose expose.Options
	// Channels configures the channels front door, Broker its core (queue
	// length, history).
	Channels channels.Options
	Broker   broker.Options

	// TLSCertFile and TLSKeyFile, when both set, make the node serve HTTPS
	// with that certificate (a wildcard for the expose domain serves every
	// agent's host).
	TLSCertFile string
	TLSKeyFile  string

	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// StatusInterval is the interval of the rate history the status page
	// charts; 0 means web.DefaultHistoryInterval.
	StatusInterval time.Duration
	// Banner, when set, gets the start-up banner as text for a person (the
	// URL of each capability, warnings); otherwise the banner is one log
	// record, followed by the original relay server's "Relay server
	// listening" record that its tooling waits for.
	Banner io.Writer
}

// DefaultConfig returns a config with every default filled in.
func DefaultConfig() Config {
	return Config{
		Listen:            DefaultListen,
		Store:             DefaultStore,
		ShutdownTimeout:   DefaultShutdownTimeout,
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		MaxHeaderBytes:    DefaultMaxHeaderBytes,
		NodeTTL:           DefaultNodeTTL,
		RedisWaitTimeout:  redisstore.DefaultWaitTimeout,
		Tunnel:            tunnel.DefaultOptions(),
		Inbox:             inbox.DefaultOptions(),
		Relay:             gcrrelay.DefaultOptions(),
		Expose:            expose.DefaultOptions(),
		Channels:          channels.DefaultOptions(),
		Broker: broker.Options{
			QueueLen:           broker.DefaultQueueLen,
			HistoryLen:         broker.DefaultHistoryLen,
			HistoryTTL:         broker.DefaultHistoryTTL,
			MaxHistoryChannels: broker.DefaultMaxHistoryChannels,
			MaxHistoryBytes:    broker.DefaultMaxHistoryBytes,
		},
	}
}

// Server is one postern node.
type Server struct {
	cfg      Config
	log      *slog.Logger
	registry *prometheus.Registry
	store    store.Engine
	queue    *queue.Core
	broker   *broker.Broker
	channels *channels.Channels
	relayHub *relay.Hub
	relay    *gcrrelay.Relay
	expose   *expose.Service
	// relayMetrics are shared by every relay hub of the node.
	relayMetrics *relay.Metrics
	handler      http.Handler
	http         *http.Server
	page         *web.Web

	nodes *nodes
	ops   *opsServer // nil without --ops-listen
	marks *markGuard
	gate  *connGate

	draining     atomic.Bool
	shutdownOnce sync.Once
	shutdownErr  error
	shutdownDone chan struct{}
}

// New opens the storage engine and assembles the node. Close it with
// Shutdown, also when it never served.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		cfg:          cfg,
		log:          cfg.Logger,
		registry:     prometheus.NewRegistry(),
		shutdownDone: make(chan struct{}),
	}
	s.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		version.Collector(),
	)
	if cfg.Policy == nil && cfg.TokenFile != "" {
		p, err := auth.Load(cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		cfg.Policy = p
	}
	s.cfg.Policy = cfg.Policy
	if cfg.Policy != nil {
		cfg.Tunnel.Policy = cfg.Policy
		cfg.Inbox.Policy = cfg.Policy
		cfg.Channels.Policy = cfg.Policy
		cfg.Relay.Policy = cfg.Policy
		cfg.Expose.Policy = cfg.Policy
	}
	var tlsConfig *tls.Config
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		if cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
			return nil, errors.New("TLS needs both a certificate and a key file")
		}
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if cfg.Relay.Logger == nil {
		cfg.Relay.Logger = cfg.Logger
	}
	st, err := OpenStore(cfg.Store, StoreOptions{
		Logger:            s.log,
		RedisWaitReplicas: cfg.RedisWaitReplicas,
		RedisWaitTimeout:  cfg.RedisWaitTimeout,
	})
	if err != nil {
		return nil, err
	}
	s.store = st
	// undo holds the shutdowns of what is built so far, for a failure
	// later in the assembly; they run in reverse, then the store closes.
	var undo []func(context.Context) error
	fail := func(err error) (*Server, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i](context.Background())
		}
		st.Close()
		return nil, err
	}
	if s.queue, err = queue.New(st, queue.Options{Metrics: s.registry}); err != nil {
		return fail(fmt.Errorf("queue core: %w", err))
	}
	undo = append(undo, s.queue.Shutdown)
	tunnels, err := tunnel.New(s.queue, cfg.Tunnel)
	if err != nil {
		return fail(err)
	}
	cfg.Inbox.Metrics = s.registry
	inboxes, err := inbox.New(s.queue, cfg.Inbox)
	if err != nil {
		return fail(err)
	}
	if s.nodes, err = newNodes(cfg, st, s.log, s.registry); err != nil {
		return fail(err)
	}
	dir := cfg.Directory
	if dir == nil {
		dir, _ = st.(store.Directory)
	}
	var keys *cluster.Keys
	if cfg.ClusterSecret != "" {
		if keys, err = cluster.New(cluster.Options{Secret: cfg.ClusterSecret, Node: s.nodes.self().ID}); err != nil {
			return fail(err)
		}
	} else if dir != nil && !cfg.ClusterInsecure {
		return fail(errNoClusterSecret)
	}
	s.marks = newMarkGuard(keys, dir != nil, s.log, s.registry)
	caps := resolveConnCaps(cfg.MaxConnections, cfg.MaxConnectionsPerAddr, dir != nil)
	s.gate = newConnGate(caps, cfg.RateLimit.TrustedProxies, s.log, s.registry)
	s.nodes.onLive = s.gate.setNodes
	var mark func(string, *http.Request) string
	if keys != nil {
		mark = keys.Sign
	}
	// One set of relay metrics for every hub of the node (relay, expose),
	// labelled by namespace.
	s.relayMetrics = relay.NewMetrics(s.registry)
	hubOpts := relay.DefaultOptions("relay")
	hubOpts.Directory = dir
	hubOpts.Mark = mark
	hubOpts.Metrics = s.relayMetrics
	hubOpts.Logger = s.log
	if s.relayHub, err = relay.New(hubOpts); err != nil {
		return fail(err)
	}
	undo = append(undo, s.relayHub.Shutdown) // stops its directory goroutine
	if s.relay, err = gcrrelay.New(s.relayHub, cfg.Relay); err != nil {
		return fail(err)
	}
	bopts := cfg.Broker
	bopts.Metrics = s.registry
	if s.broker, err = broker.New(st, bopts); err != nil {
		return fail(fmt.Errorf("broker core: %w", err))
	}
	undo = append(undo, s.broker.Shutdown)
	if s.channels, err = channels.New(s.broker, cfg.Channels, s.registry); err != nil {
		return fail(err)
	}

	exposeHub := relay.DefaultOptions("expose")
	exposeHub.Directory = dir
	exposeHub.Mark = mark
	exposeHub.RegisterTTL = cfg.Expose.RegistrationTTL
	exposeHub.Metrics = s.relayMetrics
	exposeHub.Logger = s.log
	hub, err := relay.New(exposeHub)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, hub.Shutdown)
	eo := cfg.Expose
	eo.Metrics, eo.Logger = s.registry, s.log
	eo.TrustedProxies = cfg.RateLimit.TrustedProxies
	eo.Mandates = s.queue
	if s.expose, err = expose.New(hub, eo); err != nil {
		return fail(err)
	}

	mux := httpapi.NewRouter()
	tunnels.Mount(mux)
	inboxes.Mount(mux)
	s.channels.Mount(mux)
	s.relay.Mount(mux)
	s.expose.Mount(mux)
	ops := s.opsRouter()
	home := s.mountPublicOps(mux, ops)
	unowned := notFound
	if cfg.Channels.AtRoot {
		// A dedicated channels host: every path nothing else claims is a
		// channel, "/" included.
		unowned = s.channels
	}
	mux.Fallback(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/health"):
			// The original tunnel relay answered any path under /health with "OK".
			httpapi.Handle(healthOK, nil).ServeHTTP(w, r)
		case r.URL.Path == "/" && home != nil:
			home.ServeHTTP(w, r)
		case s.relay.ServeUnowned(w, r):
			// On paths nobody owns, X-Server-Name names a relay backend.
		default:
			unowned.ServeHTTP(w, r)
		}
	}))

	rl := cfg.RateLimit
	rl.Metrics = s.registry
	limiter := ratelimit.New(rl, cfg.Policy)

	m := httpapi.NewMetrics(s.registry, s.log)
	if cfg.OpsListen != "" {
		if s.ops, err = listenOps(cfg.OpsListen, m.Wrap(ops), s.log); err != nil {
			return fail(err)
		}
	}
	// The Host check in front of the path router: NAME.<expose domain>
	// belongs to agent NAME, whatever its path.
	hosts := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.expose.ServeHost(w, r) {
			return
		}
		mux.ServeHTTP(w, r)
	})
	limited := limiter.Wrap(hosts)
	// The node's health and metrics endpoints are never rate limited; on
	// an agent's host those paths are the agent's, and are.
	s.handler = m.Wrap(s.gate.wrap(s.marks.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz", "/readyz", "/metrics":
			if !s.expose.AgentHost(r.Host) {
				mux.ServeHTTP(w, r)
				return
			}
		}
		limited.ServeHTTP(w, r)
	})), s.expose.AgentHost))
	// HTTP/2 without TLS (prior knowledge), as the original relay served
	// for gRPC clients, next to HTTP/1.1; with TLS, HTTP/2 by ALPN too.
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	if tlsConfig != nil {
		protocols.SetHTTP2(true)
	}
	s.http = &http.Server{
		TLSConfig:         tlsConfig,
		Handler:           s.handler,
		Protocols:         protocols,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ConnContext:       connContext,
		ConnState:         connState,
	}
	return s, nil
}

var notFound = httpapi.Handle(func(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(r, "not_found")
	return httpapi.ErrNotFound
}, nil)

func healthOK(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(r, "ops.health")
	w.Header().Set("Content-Type", "text/plain")
	_, err := w.Write([]byte("OK"))
	return err
}

// Handler returns the node's HTTP handler (for tests and embedding).
func (s *Server) Handler() http.Handler { return s.handler }

// WaitForLongPolls blocks until exactly n long-polls are parked on this
// node, or ctx ends: a readiness signal for tests and tools.
func (s *Server) WaitForLongPolls(ctx context.Context, n int) error {
	return s.queue.WaitForWaiters(ctx, n)
}

// WaitForSubscribers blocks until channel has exactly n subscribers on
// this node, or ctx ends: a readiness signal for tests and tools.
func (s *Server) WaitForSubscribers(ctx context.Context, channel string, n int) error {
	return s.broker.WaitForSubscribers(ctx, channel, n)
}

// WaitForRelayPolls blocks until at least n relay client polls for backend
// name are parked on this node, or ctx ends: a readiness signal for tests.
func (s *Server) WaitForRelayPolls(ctx context.Context, name string, n int) error {
	return s.relay.WaitForPolls(ctx, name, n)
}

// RelayAnnounced returns a channel closed once backend name is listed in
// the node directory for this node (at once without a directory).
func (s *Server) RelayAnnounced(name string) <-chan struct{} {
	return s.relayHub.Announced(name)
}

// ExposeAnnounced returns a channel closed once expose agent name is
// listed in the node directory for this node (at once without a
// directory).
func (s *Server) ExposeAnnounced(name string) <-chan struct{} {
	return s.expose.Hub().Announced(name)
}

// OpsAddr returns the address --ops-listen serves on ("" without it).
func (s *Server) OpsAddr() string {
	if s.ops == nil {
		return ""
	}
	return s.ops.ln.Addr().String()
}

// Registry returns the node's metrics registry.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

func (s *Server) ready(ctx context.Context) error {
	return readiness(ctx, s.draining.Load(), s.store)
}

// announce says that the node listens at addr: the banner, as text or as
// a log record.
func (s *Server) announce(addr net.Addr, tlsOn bool) {
	storeName := s.store.Name()
	if strings.HasPrefix(s.cfg.Store, "file:") {
		storeName = s.cfg.Store
	}
	in := BannerInput{
		Version: version.Version(), Store: storeName, Node: s.nodes.self().ID, Addr: addr, TLS: tlsOn,
		AtRoot: s.cfg.Channels.AtRoot, Domain: s.cfg.Expose.Domain, TokenFile: s.cfg.Policy != nil || s.cfg.TokenFile != "",
		OpenAuth: s.cfg.Tunnel.AccessToken != "" || s.cfg.Tunnel.SignatureSecret != "",
	}
	if s.ops != nil {
		in.OpsAddr = s.ops.ln.Addr()
	}
	b := NewBanner(in)
	if s.cfg.Banner != nil {
		b.WriteText(s.cfg.Banner)
		return
	}
	b.Log(s.log)
	if tcp, ok := addr.(*net.TCPAddr); ok {
		// The line the original relay server's users wait for.
		s.log.Info("Relay server listening", "Port", tcp.Port)
	}
}

// Serve serves HTTP on ln until Shutdown. It returns nil after a graceful
// shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.nodes.start(ln.Addr())
	s.page.Start()
	tlsOn := s.http.TLSConfig != nil
	s.log.Info("connection caps", s.gate.caps.describe()...)
	s.announce(ln.Addr(), tlsOn)
	// The relay hubs forward to the address the node directory lists.
	s.relayHub.SetAdvertiseURL(s.nodes.self().Addr)
	s.expose.Hub().SetAdvertiseURL(s.nodes.self().Addr)
	if s.ops != nil {
		s.ops.serve()
	}
	ln = s.gate.listen(ln, !tlsOn)
	var err error
	if tlsOn {
		err = s.http.ServeTLS(ln, "", "")
	} else {
		err = s.http.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		<-s.shutdownDone
		return nil
	}
	return err
}

// Shutdown drains the node: /readyz turns 503, waiting long-polls are
// answered, the listener closes, requests in progress finish (bounded by
// ctx), then the store is closed. It is idempotent; every call waits for the
// one drain and returns its result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		defer close(s.shutdownDone)
		s.draining.Store(true)
		s.log.Info("draining")
		s.page.Close()
		var errs []error
		s.nodes.stop() // leave the node directory first: nothing new is sent here
		// Expose: its hub drains the requests in flight while the agents
		// that answer them are still connected, then the agents go.
		errs = append(errs, s.expose.Shutdown(ctx))
		errs = append(errs, s.queue.Shutdown(ctx))
		// Relays in flight finish while the listener is still open: their
		// relay clients keep posting chunks. Then parked polls are answered.
		errs = append(errs, s.relayHub.Shutdown(ctx))
		errs = append(errs, s.relay.Shutdown(ctx))
		// Ending the subscriptions closes websockets (1001) and event
		// streams; http.Server does not wait for hijacked connections,
		// so the channels front door is waited for on its own.
		errs = append(errs, s.broker.Shutdown(ctx))
		if err := s.channels.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("channels drain: %w", err))
		}
		if err := s.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http drain: %w", err))
			s.http.Close()
		}
		s.gate.wait() // refusals being answered end within a second
		if s.ops != nil {
			if err := s.ops.shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("ops drain: %w", err))
			}
		}
		errs = append(errs, s.store.Close())
		s.shutdownErr = errors.Join(errs...)
		s.log.Info("stopped")
	})
	<-s.shutdownDone
	return s.shutdownErr
}
