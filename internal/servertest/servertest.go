// Package servertest is the one harness the capabilities' tests share: it
// starts real postern nodes, in-process, on a kernel-chosen 127.0.0.1 port,
// shut down and checked when the test ends, and runs a test on every
// storage engine (ForEachEngine).
//
// A test package whose tests run on Redis shares one private redis-server
// among them, installed in its TestMain:
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
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/postern/postern/internal/server"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// EngineNames are the storage engines ForEachEngine runs a test on.
var EngineNames = []string{"memory", "file", "redis"}

// Engine is one storage engine, as a test runs on it.
type Engine struct {
	// Name is "memory", "file" or "redis".
	Name string
	// Store is the engine's spec for server.Config.Store, the test's own:
	// a fresh data directory for the file engine, a fresh key prefix on
	// the package's redis-server for Redis. A node the test restarts
	// with it finds the data the last one left.
	Store string
}

// Durable reports whether what a node stored outlives it.
func (e Engine) Durable() bool { return e.Name != "memory" }

// NewEngine returns engine name for t. Redis needs the package's shared
// redis-server (redistest.Main); without redis-server installed the test
// is skipped, or fails under CI=true.
func NewEngine(t testing.TB, name string) Engine {
	t.Helper()
	e := Engine{Name: name, Store: name}
	switch name {
	case "file":
		e.Store = "file:" + t.TempDir()
	case "redis":
		e.Store = redistest.URL(t)
	}
	return e
}

// ForEachEngine runs fn as a subtest per engine of EngineNames, each with
// an engine of the subtest's own.
func ForEachEngine(t *testing.T, fn func(t *testing.T, e Engine)) {
	t.Helper()
	for _, name := range EngineNames {
		t.Run(name, func(t *testing.T) { fn(t, NewEngine(t, name)) })
	}
}

// Node is a running postern node.
type Node struct {
	*server.Server
	// URL is the node's base URL, "http://127.0.0.1:<port>".
	URL string
	// Addr is the node's listen address.
	Addr string
}

// Config returns the default node config for tests: memory store, logs
// discarded unless the test runs with -v and POSTERN_TEST_LOG is set.
func Config() server.Config {
	cfg := server.DefaultConfig()
	cfg.Store = "memory"
	cfg.Listen = "127.0.0.1:0"
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// Start runs a node with cfg and registers its shutdown with t.Cleanup.
func Start(t testing.TB, cfg server.Config) *Node {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Shutdown(context.Background())
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	n := &Node{Server: srv, URL: "http://" + ln.Addr().String(), Addr: ln.Addr().String()}
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
	if err := n.Server.WaitForLongPolls(ctx, count); err != nil {
		t.Fatalf("waiting for %d long-polls: %v", count, err)
	}
}

// WaitForSubscribers blocks until channel has exactly count subscribers on
// the node, failing the test after 10 seconds.
func (n *Node) WaitForSubscribers(t testing.TB, channel string, count int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Server.WaitForSubscribers(ctx, channel, count); err != nil {
		t.Fatalf("waiting for %d subscribers of %q: %v", count, channel, err)
	}
}
