package expose_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/relaytest"
	"github.com/postern/postern/internal/servertest"
)

// exposeWith runs a native agent with access rules until the test ends.
func exposeWith(t *testing.T, c *client.Client, o client.ExposeOptions) {
	t.Helper()
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{}, 1)
	o.OnReady = func(string) {
		select {
		case ready <- struct{}{}:
		default:
		}
	}
	done := make(chan error, 1)
	go func() { done <- c.Expose(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Expose: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Expose: %v", err)
	}
}

func status(t *testing.T, hc *http.Client, n *servertest.Node, host string, hdr ...string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", n.URL+"/", nil)
	req.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestAllowListSeesTheClientAsEverythingElse: the address an allow-list
// checks is the one the connection caps and rate limits count: the peer,
// or behind --trusted-proxies the client X-Forwarded-For names; a request
// forwarded by another node is checked against the address that node saw,
// which a user cannot claim with X-Postern-Client.
func TestAllowListSeesTheClientAsEverythingElse(t *testing.T) {
	dir := relaytest.NewDirectory()
	shared := func(c *node.Config) { c.Directory = dir }
	a, b := startNode(t, shared), startNode(t, shared)
	cl, _ := client.New(a.URL)
	exposeWith(t, cl, client.ExposeOptions{Name: "lan", Local: localBackend(t), AllowCIDR: []string{"127.0.0.2/32"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dir.WaitFor(ctx, "expose", "lan", 1); err != nil {
		t.Fatal(err)
	}
	from1, from2 := servertest.ClientFrom(t, "127.0.0.1"), servertest.ClientFrom(t, "127.0.0.2")
	for _, n := range []*servertest.Node{a, b} {
		if got := status(t, from2, n, "lan."+domain); got != 200 {
			t.Errorf("from 127.0.0.2 via %s: %d", n.URL, got)
		}
		if got := status(t, from1, n, "lan."+domain, "X-Postern-Client", "127.0.0.2", "X-Forwarded-For", "127.0.0.2"); got != http.StatusForbidden {
			t.Errorf("from 127.0.0.1 claiming 127.0.0.2 via %s: %d", n.URL, got)
		}
	}

	// Behind a trusted proxy the client it names counts.
	p := startNode(t, func(c *node.Config) { c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")} })
	pc, _ := client.New(p.URL)
	exposeWith(t, pc, client.ExposeOptions{Name: "office", Local: localBackend(t), AllowCIDR: []string{"192.0.2.0/24"}})
	if got := status(t, from1, p, "office."+domain, "X-Forwarded-For", "192.0.2.44"); got != 200 {
		t.Errorf("through the trusted proxy for 192.0.2.44: %d", got)
	}
	if got := status(t, from1, p, "office."+domain, "X-Forwarded-For", "192.0.2.44, 198.51.100.1"); got != http.StatusForbidden {
		t.Errorf("through the trusted proxy for 198.51.100.1: %d", got)
	}
	if got := status(t, from2, p, "office."+domain, "X-Forwarded-For", "192.0.2.44"); got != http.StatusForbidden {
		t.Errorf("from 127.0.0.2, not a trusted proxy, claiming 192.0.2.44: %d", got)
	}
}
