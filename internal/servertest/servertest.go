// Package servertest is the one harness the capabilities' tests share: it
// starts real postern nodes, in-process, on a kernel-chosen 127.0.0.1 port,
// shut down and checked when the test ends, and runs a test on every
// storage engine (ForEachEngine).
//
// A test package whose tests run on Redis shares one private redis-server
// and one private Redis Cluster among them, installed in its TestMain:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }
//
//	servertest.ForEachEngine(t, func(t *testing.T, e servertest.Engine) {
//		cfg := servertest.Config()
//		cfg.Store = e.Store
//		n := servertest.Start(t, cfg)
//		...
//	})
package servertest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// EngineNames are the storage engines ForEachEngine runs a test on.
var EngineNames = []string{"memory", "file", "redis", "redis-cluster"}

// SharedEngineNames are the engines that many nodes share, which
// ForEachSharedEngine runs a test on: one Redis, and a Redis Cluster of
// three masters with a replica each.
var SharedEngineNames = []string{"redis", "redis-cluster"}

// Engine is one storage engine, as a test runs on it.
type Engine struct {
	// Name is "memory", "file", "redis" or "redis-cluster".
	Name string
	// Store is the engine's spec for node.Config.Store, the test's own:
	// a fresh data directory for the file engine, a fresh key prefix on
	// the package's redis-server or Redis Cluster for Redis. A node the
	// test restarts with it finds the data the last one left.
	Store string
}

// Durable reports whether what a node stored outlives it.
func (e Engine) Durable() bool { return e.Name != "memory" }

// Shared reports whether many nodes can share the engine.
func (e Engine) Shared() bool { return e.Name == "redis" || e.Name == "redis-cluster" }

// NewEngine returns engine name for t. Redis needs the package's shared
// redis-server and Redis Cluster (redistest.Main); without redis-server
// (or redis-cli, for the cluster) installed the test is skipped, or fails
// under CI=true.
func NewEngine(t testing.TB, name string) Engine {
	t.Helper()
	e := Engine{Name: name, Store: name}
	switch name {
	case "file":
		e.Store = "file:" + t.TempDir()
	case "redis":
		e.Store = redistest.URL(t)
	case "redis-cluster":
		e.Store = redistest.ClusterURL(t)
	}
	return e
}

// ForEachEngine runs fn as a subtest per engine of EngineNames, each with
// an engine of the subtest's own.
func ForEachEngine(t *testing.T, fn func(t *testing.T, e Engine)) {
	t.Helper()
	forEach(t, EngineNames, fn)
}

// ForEachSharedEngine runs fn as a subtest per engine of
// SharedEngineNames: the tests of what many nodes do together.
func ForEachSharedEngine(t *testing.T, fn func(t *testing.T, e Engine)) {
	t.Helper()
	forEach(t, SharedEngineNames, fn)
}

func forEach(t *testing.T, names []string, fn func(t *testing.T, e Engine)) {
	t.Helper()
	for _, name := range names {
		t.Run(name, func(t *testing.T) { fn(t, NewEngine(t, name)) })
	}
}

// Node is a running postern node.
type Node struct {
	*node.Node
	// URL is the node's base URL, "http://127.0.0.1:<port>".
	URL string
	// Addr is the node's listen address.
	Addr string
}

// ClusterSecret is the cluster secret of the nodes Config makes, so that
// nodes sharing a directory forward to each other with signed marks.
const ClusterSecret = "servertest-cluster-secret-0123456789"

// Config returns the default node config for tests: memory store, the
// test cluster secret, logs discarded unless the test runs with -v and
// POSTERN_TEST_LOG is set.
func Config() node.Config {
	cfg := node.DefaultConfig()
	cfg.ClusterSecret = ClusterSecret
	cfg.Store = "memory"
	cfg.Listen = "127.0.0.1:0"
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// Start runs a node with cfg and registers its shutdown with t.Cleanup.
func Start(t testing.TB, cfg node.Config) *Node {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv, err := node.New(cfg)
	if err != nil {
		t.Fatalf("node.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Shutdown(context.Background())
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	n := &Node{Node: srv, URL: "http://" + ln.Addr().String(), Addr: ln.Addr().String()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		http.DefaultClient.CloseIdleConnections()
	})
	return n
}

// WaitForLongPolls blocks until exactly count long-polls are parked on the
// node, failing the test after 10 seconds.
func (n *Node) WaitForLongPolls(t testing.TB, count int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Node.WaitForLongPolls(ctx, count); err != nil {
		t.Fatalf("waiting for %d long-polls: %v", count, err)
	}
}

// WaitForSubscribers blocks until channel has exactly count subscribers on
// the node, failing the test after 10 seconds.
func (n *Node) WaitForSubscribers(t testing.TB, channel string, count int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Node.WaitForSubscribers(ctx, channel, count); err != nil {
		t.Fatalf("waiting for %d subscribers of %q: %v", count, channel, err)
	}
}

// Metric reads metric name from the node's registry: the sum of its
// series, counters and gauges alike.
func (n *Node) Metric(t testing.TB, name string) float64 {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// ClientFrom returns an HTTP client whose connections come from local
// address ip (any of 127.0.0.0/8 on loopback), giving up after a minute.
func ClientFrom(t testing.TB, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: -1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// Logs collects a node's logs (Config.Logger = slog.New(slog.NewTextHandler(logs, nil)))
// safely from the node's goroutines.
type Logs struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was logged so far.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// HoldWebsockets opens n channel websockets (/c/hold-<ip>-<i>) to the
// server at baseURL from local address ip, eight at a time, and counts
// the answers by status (101 for each that opened, -1 for no answer). The
// ones that opened are closed when the test ends.
func HoldWebsockets(ctx context.Context, t testing.TB, baseURL, ip string, n int) map[int]int {
	t.Helper()
	hc := ClientFrom(t, ip)
	ws := "ws" + strings.TrimPrefix(baseURL, "http")
	var mu sync.Mutex
	got := map[int]int{}
	var held []*websocket.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.CloseNow()
		}
	})
	next := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range next {
				c, resp, err := websocket.Dial(ctx, fmt.Sprintf("%s/c/hold-%s-%d", ws, ip, i), &websocket.DialOptions{HTTPClient: hc})
				mu.Lock()
				switch {
				case err == nil:
					held = append(held, c)
					got[101]++
				case resp != nil:
					got[resp.StatusCode]++
				default:
					got[-1]++
				}
				mu.Unlock()
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return got
}
