// Package node assembles a postern node: it opens the storage engine,
// builds the cores and the capabilities on them in one ordered list
// (assemble.go), which also drives start-up, undo on failure and the
// graceful shutdown (in reverse), mounts every route on one table
// (httpapi.Routes), and serves it behind the node's own guards: the
// connection caps (conns.go), the check of forwarding marks (marks.go),
// the rate limits, and the operations endpoints behind the ops grant or on
// their own listener (ops.go). Membership in the node directory of a
// shared engine is membership.go; the engine itself is opened by store.go.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/certs"
	"github.com/postern/postern/internal/channels"
	"github.com/postern/postern/internal/expose"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/inbox"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/ratelimit"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/gcr"
	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/tunnel"
	"github.com/postern/postern/internal/version"
)

// Defaults of the node and its HTTP server.
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
	// trusted proxy (TrustedProxies) the client is the one
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
	// TrustedProxies are the proxies whose X-Forwarded-For names the
	// client: for the rate limits, the connection caps, the loopback rules
	// of the ops endpoints and of expose agents.
	TrustedProxies []netip.Prefix

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

	// Queue configures the core behind tunnels and the inbox (the
	// delivery lease).
	Queue  queue.Options
	Tunnel tunnel.Options
	Inbox  inbox.Options
	Relay  gcr.Options
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
	// ACME, when it names domains, makes the node serve HTTPS with
	// certificates it obtains and renews itself (internal/certs): those
	// domains', and NAME.<expose domain>'s while agent NAME is connected.
	// Its Dir defaults to DefaultACMEDir(Store); its ExposeDomain and
	// Connected are the node's. Exclusive with TLSCertFile.
	ACME certs.Options

	// Logger receives the node's logs; nil means slog.Default().
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
		Queue:             queue.Options{Lease: queue.DefaultLease},
		Tunnel:            tunnel.DefaultOptions(),
		Inbox:             inbox.DefaultOptions(),
		Relay:             gcr.DefaultOptions(),
		Expose:            expose.DefaultOptions(),
		ACME:              certs.Options{CA: certs.DefaultCA},
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

// Node is one postern node.
type Node struct {
	cfg      Config
	log      *slog.Logger
	registry *prometheus.Registry
	deps     capability.Deps
	tls      *tls.Config    // nil: plain HTTP
	certs    *certs.Manager // nil without ACME

	store    store.Engine
	queue    *queue.Core
	broker   *broker.Broker
	channels *channels.Channels
	relayHub *relay.Hub
	relay    *gcr.Relay
	expose   *expose.Service

	members *membership
	marks   *markGuard
	gate    *connGate
	routes  *httpapi.Routes
	metrics *httpapi.Metrics
	handler http.Handler
	http    *http.Server
	ops     *opsServer // nil without --ops-listen

	parts []part // built, in assembly order

	draining     atomic.Bool
	shutdownOnce sync.Once
	// startMu orders Serve's starting of the parts against Shutdown's
	// stopping them: a Shutdown that comes first leaves nothing to start.
	startMu      sync.Mutex
	shutdownErr  error
	shutdownDone chan struct{}
}

// New assembles the node (see assembly): it opens the storage engine and
// builds every part; when a part fails, those built so far are stopped in
// reverse. Close the node with Shutdown, also when it never served.
func New(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Policy == nil && cfg.TokenFile != "" {
		p, err := auth.Load(cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		cfg.Policy = p
	}
	n := &Node{
		cfg:          cfg,
		log:          cfg.Logger,
		registry:     prometheus.NewRegistry(),
		shutdownDone: make(chan struct{}),
	}
	n.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		version.Collector(),
	)
	for _, s := range n.assembly() {
		p, err := s.build()
		if err != nil {
			n.stopParts(context.Background())
			return nil, err
		}
		p.name = s.name
		n.parts = append(n.parts, p)
	}
	return n, nil
}

// Handler returns the node's HTTP handler (for tests and embedding).
func (n *Node) Handler() http.Handler { return n.handler }

// Registry returns the node's metrics registry.
func (n *Node) Registry() *prometheus.Registry { return n.registry }

// WaitForLongPolls blocks until exactly count long-polls are parked on
// this node, or ctx ends: a readiness signal for tests and tools.
func (n *Node) WaitForLongPolls(ctx context.Context, count int) error {
	return n.queue.WaitForWaiters(ctx, count)
}

// WaitForSubscribers blocks until channel has exactly count subscribers on
// this node, or ctx ends: a readiness signal for tests and tools.
func (n *Node) WaitForSubscribers(ctx context.Context, channel string, count int) error {
	return n.broker.WaitForSubscribers(ctx, channel, count)
}

// WaitForRelayPolls blocks until at least count relay client polls for
// backend name are parked on this node, or ctx ends: a readiness signal
// for tests.
func (n *Node) WaitForRelayPolls(ctx context.Context, name string, count int) error {
	return n.relay.WaitForPolls(ctx, name, count)
}

// RelayAnnounced returns a channel closed once backend name is listed in
// the node directory for this node (at once without a directory).
func (n *Node) RelayAnnounced(name string) <-chan struct{} {
	return n.relayHub.Announced(name)
}

// ExposeAnnounced returns a channel closed once expose agent name is
// listed in the node directory for this node (at once without a
// directory).
func (n *Node) ExposeAnnounced(name string) <-chan struct{} {
	return n.expose.Hub().Announced(name)
}

// WildcardReady returns a channel closed once the node serves the
// expose domain's wildcard certificate (never without ACME and a DNS
// provider): a readiness signal for tests and tools.
func (n *Node) WildcardReady() <-chan struct{} {
	if n.certs == nil {
		return make(chan struct{})
	}
	return n.certs.WildcardReady()
}

// OpsAddr returns the address --ops-listen serves on ("" without it).
func (n *Node) OpsAddr() string {
	if n.ops == nil {
		return ""
	}
	return n.ops.ln.Addr().String()
}

// ready is /readyz's verdict (see readiness): nil when the node takes
// traffic.
func (n *Node) ready(ctx context.Context) error {
	return readiness(ctx, n.draining.Load(), n.store)
}

// announce says that the node listens at addr: the banner, as text or as
// a log record.
func (n *Node) announce(addr net.Addr, tlsOn bool) {
	storeName := n.store.Name()
	if strings.HasPrefix(n.cfg.Store, "file:") {
		storeName = n.cfg.Store
	}
	in := BannerInput{
		Version: version.Version(), Store: storeName, Node: n.members.self().ID, Addr: addr, TLS: tlsOn,
		AtRoot: n.cfg.Channels.AtRoot, Domain: n.cfg.Expose.Domain, TokenFile: n.cfg.Policy != nil || n.cfg.TokenFile != "",
		OpenAuth: n.cfg.Tunnel.AccessToken != "" || n.cfg.Tunnel.SignatureSecret != "",
	}
	if n.ops != nil {
		in.OpsAddr = n.ops.ln.Addr()
	}
	if n.certs != nil {
		in.Name = n.certs.Name()
	}
	b := NewBanner(in)
	if n.cfg.Banner != nil {
		b.WriteText(n.cfg.Banner)
		return
	}
	b.Log(n.log)
	if tcp, ok := addr.(*net.TCPAddr); ok {
		// The line the original relay server's users wait for.
		n.log.Info("Relay server listening", "Port", tcp.Port)
	}
}

// Serve serves HTTP on ln until Shutdown; it returns nil after a graceful
// shutdown. The parts start in assembly order once the node knows its
// address (the node joins the directory last, so it is listed by the
// time it says it listens).
func (n *Node) Serve(ln net.Listener) error {
	n.startMu.Lock()
	if n.draining.Load() {
		n.startMu.Unlock()
		ln.Close()
		<-n.shutdownDone
		return nil
	}
	n.members.resolve(ln.Addr())
	for _, p := range n.parts {
		if p.start != nil {
			p.start()
		}
	}
	n.startMu.Unlock()
	tlsOn := n.http.TLSConfig != nil
	n.log.Info("connection caps", n.gate.caps.describe()...)
	n.announce(ln.Addr(), tlsOn)
	ln = n.gate.listen(ln, !tlsOn)
	// TLS for passthrough agents' names goes to them, not to the server.
	ln = n.expose.Listener(ln, n.cfg.ReadHeaderTimeout)
	var err error
	if tlsOn {
		err = n.http.ServeTLS(ln, "", "")
	} else {
		err = n.http.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		<-n.shutdownDone
		return nil
	}
	return err
}

// Shutdown drains the node: /readyz turns 503, then the parts stop in the
// reverse of the order they were built (see assembly), each draining what
// it serves within ctx, and the store closes last. It is idempotent; every
// call waits for the one drain and returns its result.
func (n *Node) Shutdown(ctx context.Context) error {
	n.shutdownOnce.Do(func() {
		defer close(n.shutdownDone)
		n.startMu.Lock()
		n.draining.Store(true)
		n.startMu.Unlock()
		n.log.Info("draining")
		n.shutdownErr = n.stopParts(ctx)
		n.log.Info("stopped")
	})
	<-n.shutdownDone
	return n.shutdownErr
}

// stopParts stops the parts built, last first.
func (n *Node) stopParts(ctx context.Context) error {
	var errs []error
	for i := len(n.parts) - 1; i >= 0; i-- {
		p := n.parts[i]
		if p.stop == nil {
			continue
		}
		if err := p.stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
		}
	}
	return errors.Join(errs...)
}
