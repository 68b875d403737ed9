package node

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/ratelimit"
	"github.com/postern/postern/internal/store"
)

// Defaults of the connection caps.
const (
	// DefaultMaxConnectionsPerAddr is the most connections one client
	// address (an IPv6 client: its /64) may hold open, when
	// Config.MaxConnectionsPerAddr is zero; it is lowered to half of the
	// node's cap when that is small, so that one address never holds the
	// whole node.
	DefaultMaxConnectionsPerAddr = 1024
	// OpsConnections are accepted beyond Config.MaxConnections for the
	// node's own /healthz, /readyz and /metrics only (the table's Ops
	// routes), so a full node can still say so to its load balancer and
	// its monitoring.
	OpsConnections = 16
	// reservedFiles are the file descriptors a node keeps for other than
	// client connections (its store, logs, Redis, listeners) when it
	// derives its connection cap from the process's file limit.
	reservedFiles = 128
)

// Answers to connections refused at accept, written before anything is
// read (plain HTTP only: a TLS connection is closed).
const (
	tooManyConnections = "HTTP/1.1 503 Service Unavailable\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 20\r\n\r\n" +
		"too many connections"
	tooManyFromAddr = "HTTP/1.1 429 Too Many Requests\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 38\r\n\r\n" +
		"too many connections from your address"
)

// The same answers, for requests.
var (
	errTooManyConnections = httpapi.Errorf(http.StatusServiceUnavailable, "too many connections").WithHeader("Retry-After", "1")
	errTooManyFromAddr    = httpapi.Errorf(http.StatusTooManyRequests, "too many connections from your address").WithHeader("Retry-After", "1")
)

// connCaps are the caps a node applies: zero means none.
type connCaps struct {
	max, perAddr int
	fileLimit    uint64 // 0: unknown
}

// resolveConnCaps turns the configured caps into the ones applied: a
// configured zero takes the default (the cap derived from the process's
// open-file limit, DefaultMaxConnectionsPerAddr), a negative value means
// none. A node that forwards to others may need a second descriptor per
// client connection, so it derives half the cap.
func resolveConnCaps(total, perAddr int, forwarding bool) connCaps {
	c := connCaps{max: total, perAddr: perAddr}
	if c.max == 0 {
		c.fileLimit = fileLimit()
		c.max = deriveMaxConnections(c.fileLimit, forwarding)
	}
	c.max = keepPositive(c.max)
	if c.perAddr == 0 {
		c.perAddr = DefaultMaxConnectionsPerAddr
		if c.max > 0 && c.perAddr > c.max/2 {
			c.perAddr = max(1, c.max/2)
		}
	}
	c.perAddr = keepPositive(c.perAddr)
	return c
}

func keepPositive(n int) int { return max(n, 0) }

// deriveMaxConnections is the client connection cap a file limit allows:
// what is left after the descriptors the node keeps for itself and the
// ops reserve (half of it when the node forwards); 0 (no cap) when the
// limit is unknown.
func deriveMaxConnections(limit uint64, forwarding bool) int {
	if limit == 0 {
		return 0
	}
	if limit > 1<<30 {
		limit = 1 << 30
	}
	usable := int(limit) - reservedFiles
	if usable < 4*OpsConnections {
		return max(1, int(limit)/4)
	}
	if forwarding {
		usable /= 2
	}
	return usable - OpsConnections
}

// connGate caps the connections open at once, in total and per client
// address, at accept: a connection over a cap is answered in plain HTTP
// (503 for the total, 429 for its address) and closed without being read,
// never left waiting in the backlog. Up to OpsConnections more than the
// total cap are taken for the ops endpoints only (opsOnly). Connections
// from trusted proxies and from the other nodes are not capped per
// address at accept; requests through a trusted proxy are counted per
// client address (X-Forwarded-For) while in progress instead, a hijacked
// one (a websocket) until its connection closes.
type connGate struct {
	caps    connCaps
	trusted []netip.Prefix
	log     *slog.Logger
	nodes   atomic.Pointer[map[netip.Addr]bool] // other nodes' addresses

	mu      sync.Mutex
	open    int
	byAddr  map[string]int // accepted connections per address key
	proxied map[string]int // requests in progress per client behind a trusted proxy

	refused  *prometheus.CounterVec
	refusing chan struct{}  // refusals waiting for a request head
	wg       sync.WaitGroup // their goroutines
}

func newConnGate(caps connCaps, deps capability.Deps) *connGate {
	g := &connGate{
		caps: caps, trusted: deps.TrustedProxies, log: deps.Log(),
		byAddr:   make(map[string]int),
		proxied:  make(map[string]int),
		refusing: make(chan struct{}, refuseWaiting),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_connections_refused_total",
			Help: "Client connections (or requests through a trusted proxy) refused by a connection cap: total or addr (per client address).",
		}, []string{"cap"}),
	}
	deps.Register(g.refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postern_connections_open",
		Help: "Client connections open.",
	}, func() float64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		return float64(g.open)
	}))
	return g
}

// listen wraps ln; plain says whether it serves plain HTTP (refusals are
// then answered).
func (g *connGate) listen(ln net.Listener, plain bool) net.Listener {
	return &gateListener{Listener: ln, g: g, plain: plain}
}

// exempt reports whether connections from ip are not capped per address:
// trusted proxies (their clients are counted per request) and nodes.
func (g *connGate) exempt(ip netip.Addr) bool {
	if g.isTrusted(ip) {
		return true
	}
	m := g.nodes.Load()
	return m != nil && (*m)[ip]
}

// setNodes records the addresses of the live nodes (their advertised
// hosts, resolved), whose forwarded requests are not capped per address.
func (g *connGate) setNodes(live []store.NodeInfo) {
	m := make(map[netip.Addr]bool, len(live))
	for _, n := range live {
		u, err := url.Parse(n.Addr)
		if err != nil || u.Hostname() == "" {
			continue
		}
		if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
			m[ip.Unmap()] = true
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", u.Hostname())
		cancel()
		if err != nil {
			g.log.Debug("resolving a node's address failed", "addr", n.Addr, "err", err)
			continue
		}
		for _, ip := range ips {
			m[ip.Unmap()] = true
		}
	}
	g.nodes.Store(&m)
}

type gateListener struct {
	net.Listener
	g     *connGate
	plain bool
}

func (l *gateListener) Accept() (net.Conn, error) {
	g := l.g
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := peerAddr(c.RemoteAddr())
		key := ""
		if g.caps.perAddr > 0 && !g.exempt(ip) {
			key = ratelimit.AddrKey(ip)
		}
		g.mu.Lock()
		switch {
		case key != "" && g.byAddr[key] >= g.caps.perAddr:
			g.mu.Unlock()
			g.refused.WithLabelValues("addr").Inc()
			g.refuse(c, l.plain, tooManyFromAddr)
			continue
		case g.caps.max > 0 && g.open >= g.caps.max+OpsConnections:
			g.mu.Unlock()
			g.refused.WithLabelValues("total").Inc()
			g.refuse(c, l.plain, tooManyConnections)
			continue
		}
		opsOnly := g.caps.max > 0 && g.open >= g.caps.max
		g.open++
		if key != "" {
			g.byAddr[key]++
		}
		g.mu.Unlock()
		return &gateConn{Conn: c, g: g, key: key, peer: ip, opsOnly: opsOnly}, nil
	}
}

func peerAddr(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// refuse answers a connection over a cap and closes it. The answer waits
// for the client's request head (up to refuseReadTimeout), since an HTTP
// client that finds an answer before it has written its request takes it
// for a broken connection; at most refuseWaiting connections wait so, the
// others are answered at once. TLS connections are closed unanswered.
func (g *connGate) refuse(c net.Conn, plain bool, answer string) {
	if !plain {
		c.Close()
		return
	}
	select {
	case g.refusing <- struct{}{}:
	default:
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		io.WriteString(c, answer)
		c.Close()
		return
	}
	g.wg.Go(func() {
		defer func() { <-g.refusing }()
		c.SetDeadline(time.Now().Add(refuseReadTimeout))
		readHead(c)
		io.WriteString(c, answer)
		c.Close()
	})
}

// Bounds of refuse.
const (
	refuseReadTimeout = time.Second
	refuseWaiting     = 64
)

// readHead reads from c until the end of a request head, 8 KiB, an error
// or the deadline.
func readHead(c net.Conn) {
	var buf [1024]byte
	seen := make([]byte, 0, 8<<10)
	for len(seen) < cap(seen) {
		n, err := c.Read(buf[:min(len(buf), cap(seen)-len(seen))])
		seen = append(seen, buf[:n]...)
		if err != nil || bytes.Contains(seen, []byte("\r\n\r\n")) {
			return
		}
	}
}

// wait waits for the refusals still being answered.
func (g *connGate) wait() { g.wg.Wait() }

// gateConn is an accepted connection; closing it frees its places.
type gateConn struct {
	net.Conn
	g       *connGate
	key     string
	peer    netip.Addr
	opsOnly bool

	mu       sync.Mutex
	closed   bool
	hijacked bool
	onClose  []func()
}

func (c *gateConn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return err
	}
	c.closed = true
	fns := c.onClose
	c.onClose = nil
	c.mu.Unlock()
	g := c.g
	g.mu.Lock()
	g.open--
	if c.key != "" {
		if g.byAddr[c.key]--; g.byAddr[c.key] <= 0 {
			delete(g.byAddr, c.key)
		}
	}
	g.mu.Unlock()
	for _, f := range fns {
		f()
	}
	return err
}

// SyscallConn, CloseWrite and ReadFrom reach the socket underneath, so
// that wrapping keeps the fast paths of the front doors and net/http
// (raw writes to websockets, graceful close, sendfile).
func (c *gateConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, syscall.EINVAL
}

func (c *gateConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SetLinger reaches the socket too: a raw connection an expose agent
// carries is reset (linger 0) when the agent's side fails.
func (c *gateConn) SetLinger(sec int) error {
	if sl, ok := c.Conn.(interface{ SetLinger(int) error }); ok {
		return sl.SetLinger(sec)
	}
	return nil
}

func (c *gateConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// TCPConn returns the TCP socket underneath when there is one (nothing
// is buffered in between): the relay splices a posted body from it
// (net.TCPConn.ReadFrom splices only from a *net.TCPConn).
func (c *gateConn) TCPConn() (*net.TCPConn, bool) {
	tc, ok := c.Conn.(*net.TCPConn)
	return tc, ok
}

// afterClose runs f when the connection closes (at once if it has).
func (c *gateConn) afterClose(f func()) {
	c.mu.Lock()
	if !c.closed {
		c.onClose = append(c.onClose, f)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	f()
}

type gateConnKey struct{}

// connContext puts the gateConn of a connection in its requests' context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if gc := asGateConn(c); gc != nil {
		return context.WithValue(ctx, gateConnKey{}, gc)
	}
	return ctx
}

func asGateConn(c net.Conn) *gateConn {
	for {
		switch x := c.(type) {
		case *gateConn:
			return x
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = x.NetConn()
		default:
			return nil
		}
	}
}

// connState notes hijacked connections: a request through a trusted proxy
// that hijacks its connection stays counted until the connection closes.
func connState(c net.Conn, st http.ConnState) {
	if st != http.StateHijacked {
		return
	}
	if gc := asGateConn(c); gc != nil {
		gc.mu.Lock()
		gc.hijacked = true
		gc.mu.Unlock()
	}
}

// wrap applies what is decided per request: connections beyond the total
// cap serve only the ops endpoints (then close), and requests through a
// trusted proxy are capped per client address. isOps reports the requests
// that take an ops route (httpapi.Routes.Ops; on an expose agent's host
// every path is the agent's).
func (g *connGate) wrap(next http.Handler, isOps func(*http.Request) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gc, _ := r.Context().Value(gateConnKey{}).(*gateConn)
		if gc == nil {
			next.ServeHTTP(w, r)
			return
		}
		if gc.opsOnly {
			w.Header().Set("Connection", "close")
			if !isOps(r) {
				httpapi.SetRoute(w, "refused")
				httpapi.WritePlain(w, r, errTooManyConnections)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if g.caps.perAddr <= 0 || gc.key != "" || !g.isTrusted(gc.peer) {
			next.ServeHTTP(w, r)
			return
		}
		client := ratelimit.AddrKey(ratelimit.ClientAddr(r, g.trusted))
		g.mu.Lock()
		if g.proxied[client] >= g.caps.perAddr {
			g.mu.Unlock()
			g.refused.WithLabelValues("addr").Inc()
			httpapi.SetRoute(w, "refused")
			httpapi.WritePlain(w, r, errTooManyFromAddr)
			return
		}
		g.proxied[client]++
		g.mu.Unlock()
		release := func() {
			g.mu.Lock()
			if g.proxied[client]--; g.proxied[client] <= 0 {
				delete(g.proxied, client)
			}
			g.mu.Unlock()
		}
		defer func() {
			gc.mu.Lock()
			hijacked := gc.hijacked
			gc.mu.Unlock()
			if hijacked {
				gc.afterClose(release)
			} else {
				release()
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (g *connGate) isTrusted(ip netip.Addr) bool {
	for _, p := range g.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// describe is the caps for the start-up log.
func (c connCaps) describe() []any {
	limit := "unknown"
	if c.fileLimit > 0 {
		limit = strconv.FormatUint(c.fileLimit, 10)
	}
	return []any{"max_connections", c.max, "max_connections_per_addr", c.perAddr, "file_limit", limit}
}
