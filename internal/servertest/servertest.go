// Package servertest starts real postern nodes for tests: in-process, on a
// kernel-chosen 127.0.0.1 port, shut down and checked when the test ends.
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
)

// Node is a running postern node.
type Node struct {
	*server.Server
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
func Config() server.Config {
	cfg := server.DefaultConfig()
	cfg.ClusterSecret = ClusterSecret
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
