package node_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/relaytest"
	"github.com/postern/postern/internal/servertest"
)

// TestFailedAssemblyUndoes: when a part fails to build, the parts built
// before it are stopped, last first: the file engine's directory is free
// for the next node (its lock released, its checkpointer stopped), the
// relay hub's directory goroutine is gone (goleak, in TestMain), and the
// error names the setting.
func TestFailedAssemblyUndoes(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	base := func() node.Config {
		cfg := servertest.Config()
		cfg.Store = "file:" + dir
		cfg.Directory = relaytest.NewDirectory() // the relay hub runs a goroutine
		return cfg
	}
	for _, c := range []struct {
		name   string
		mutate func(*node.Config)
		want   string
	}{
		{"ops listener", func(c *node.Config) { c.OpsListen = taken.Addr().String() }, "ops listen"},
		{"certs", func(c *node.Config) { c.TLSCertFile = "cert.pem" }, "TLS needs both"},
		{"acme and a certificate file", func(c *node.Config) {
			c.ACME.Domains, c.TLSCertFile, c.TLSKeyFile = []string{"gate.example"}, "cert.pem", "key.pem"
		}, "choose one"},
		{"acme domain", func(c *node.Config) { c.ACME.Domains = []string{"*.gate.example"} }, "invalid --acme-domain"},
		{"after acme", func(c *node.Config) { c.ACME.Domains, c.Expose.Domain = []string{"gate.example"}, "a/b" }, "expose domain"},
		{"relay", func(c *node.Config) { c.Relay.PollTimeout = -1 }, "relay poll timeout"},
		{"expose", func(c *node.Config) { c.Expose.Domain = "a/b" }, "expose domain"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base()
			c.mutate(&cfg)
			n, err := node.New(cfg)
			if err == nil {
				n.Shutdown(context.Background())
				t.Fatal("the node was built")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not name %q", err, c.want)
			}
			// The engine was closed: a node takes the same directory.
			n, err = node.New(base())
			if err != nil {
				t.Fatalf("the next node: %v", err)
			}
			if err := n.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestShutdownIsIdempotent: calls at once and later all wait for the one
// drain and get its result; a node that never served shuts down too.
func TestShutdownIsIdempotent(t *testing.T) {
	n, err := node.New(servertest.Config())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := n.Shutdown(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownRacesServe: a Shutdown that comes before or while Serve
// starts the parts leaves nothing running (goleak, in TestMain) and Serve
// returns nil; the listener is closed either way. (It passes without
// startMu too: the race it guards, Serve reading the parts while Shutdown
// stopped them, showed only under load in FuzzUserRequests.)
func TestShutdownRacesServe(t *testing.T) {
	for _, first := range []string{"shutdown", "together"} {
		t.Run(first, func(t *testing.T) {
			cfg := servertest.Config()
			cfg.Directory = relaytest.NewDirectory() // parts that start goroutines
			n, err := node.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			if first == "shutdown" {
				if err := n.Shutdown(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			served := make(chan error, 1)
			go func() { served <- n.Serve(ln) }()
			if err := n.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := <-served; err != nil {
				t.Fatalf("Serve: %v", err)
			}
			if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
				c.Close()
				t.Fatal("the listener still accepts")
			}
		})
	}
}
