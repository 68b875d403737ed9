package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/store"
)

// membership is this node's membership in the node directory of a shared
// engine (store.Directory): a heartbeat goroutine, owned by the node and
// stopped by Shutdown, keeps the node listed with its advertised address,
// and /ops/nodes shows the live nodes. On engines that no other node
// shares it lists this node alone.
type membership struct {
	log *slog.Logger
	dir store.Directory // nil on single-node engines
	ttl time.Duration

	mu      sync.Mutex
	me      store.NodeInfo
	started bool
	stopped bool
	stopc   chan struct{}
	done    chan struct{}

	live prometheus.Gauge
	// onLive, when set, is told the live nodes after every heartbeat
	// (from the heartbeat goroutine).
	onLive func([]store.NodeInfo)
}

func newMembership(cfg Config, st store.Engine, deps capability.Deps) (*membership, error) {
	n := &membership{
		log:   deps.Log(),
		ttl:   cfg.NodeTTL,
		stopc: make(chan struct{}),
		done:  make(chan struct{}),
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postern_nodes_live",
			Help: "Nodes listed as alive in the node directory of the shared engine (1 on a single-node engine).",
		}),
	}
	if n.ttl == 0 {
		n.ttl = DefaultNodeTTL
	}
	if n.ttl < time.Second {
		return nil, fmt.Errorf("node TTL must be at least 1s, got %v", n.ttl)
	}
	if dir, ok := st.(store.Directory); ok {
		n.dir = dir
	}
	n.me.ID = cfg.NodeID
	if n.me.ID == "" {
		n.me.ID = defaultNodeID()
	}
	if cfg.AdvertiseAddr != "" {
		addr, err := normalizeAdvertise(cfg.AdvertiseAddr)
		if err != nil {
			return nil, err
		}
		n.me.Addr = addr
	}
	n.live.Set(1)
	deps.Register(n.live)
	return n, nil
}

func defaultNodeID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "node"
	}
	var b [4]byte
	rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// normalizeAdvertise accepts "host:port" or an http(s) base URL.
func normalizeAdvertise(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("advertise address %q: want host:port or http(s)://host:port", s)
	}
	return u.Scheme + "://" + u.Host, nil
}

// advertiseFrom derives the advertised URL from the listen address.
func advertiseFrom(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "http://" + addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

func (n *membership) self() store.NodeInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.me
}

// resolve settles the advertised address once the listen address is
// known, when none was configured.
func (n *membership) resolve(ln net.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.me.Addr == "" {
		n.me.Addr = advertiseFrom(ln)
	}
}

// start registers the node (after resolve), so that it is listed by the
// time the node logs that it listens, then keeps beating.
func (n *membership) start() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started || n.stopped || n.dir == nil {
		return
	}
	n.started = true
	failing := !n.beat(n.me, false)
	go n.run(n.me, failing)
}

// beat renews the node's entry and counts the live nodes. It reports
// whether that worked, logging only a change from working to failing.
func (n *membership) beat(me store.NodeInfo, failing bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), n.ttl/3)
	defer cancel()
	err := n.dir.Heartbeat(ctx, me, n.ttl)
	var live []store.NodeInfo
	if err == nil {
		live, err = n.dir.Nodes(ctx)
	}
	switch {
	case err != nil && !failing:
		n.log.Warn("node heartbeat failed", "node", me.ID, "err", err)
	case err == nil && failing:
		n.log.Info("node heartbeat back", "node", me.ID)
	}
	if err == nil {
		n.live.Set(float64(len(live)))
		if n.onLive != nil {
			n.onLive(live)
		}
	}
	return err == nil
}

// stop ends the heartbeat and takes the node out of the directory. It is
// idempotent.
func (n *membership) stop() {
	n.mu.Lock()
	started := n.started
	if !n.stopped {
		n.stopped = true
		close(n.stopc)
	}
	n.mu.Unlock()
	if started {
		<-n.done
	}
}

func (n *membership) run(me store.NodeInfo, failing bool) {
	defer close(n.done)
	t := time.NewTicker(n.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-n.stopc:
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := n.dir.Heartbeat(ctx, me, 0); err != nil && !errors.Is(err, store.ErrClosed) {
				n.log.Warn("leaving the node directory failed; the entry expires by itself", "node", me.ID, "err", err)
			}
			return
		case <-t.C:
			failing = !n.beat(me, failing)
		}
	}
}

type nodeJSON struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
}

// mount adds GET /ops/nodes: this node and the live nodes, as JSON.
func (n *membership) mount(rt *httpapi.Routes) {
	rt.Handle("/ops/nodes", httpapi.Handle(func(w http.ResponseWriter, r *http.Request) error {
		httpapi.SetRoute(w, "ops.nodes")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return httpapi.MethodNotAllowed(http.MethodGet, http.MethodHead)
		}
		me := n.self()
		live := []store.NodeInfo{me}
		if n.dir != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			var err error
			if live, err = n.dir.Nodes(ctx); err != nil {
				return err
			}
		}
		out := struct {
			Self  nodeJSON   `json:"self"`
			Nodes []nodeJSON `json:"nodes"`
		}{Self: nodeJSON(me), Nodes: make([]nodeJSON, 0, len(live))}
		for _, x := range live {
			out.Nodes = append(out.Nodes, nodeJSON(x))
		}
		b, err := json.Marshal(out)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
		_, err = w.Write(append(b, '\n'))
		return err
	}, nil))
}
