package expose_test

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// TestAgentHandshakeFromABrowserRefused: without a token file only agents
// on the server's own host may claim a name, a rule a web page open in a
// browser on that host would pass (websockets are not bound by the
// same-origin policy). Browsers always send Origin on a websocket
// handshake and the native agent never does, so a handshake with an
// Origin is refused there.
func TestAgentHandshakeFromABrowserRefused(t *testing.T) {
	n := startNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, origin := range []string{"https://evil.example", "null", "http://127.0.0.1:1234"} {
		_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.URL, "http")+"/agent?name=shop", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
		if err == nil || resp == nil || resp.StatusCode != 403 {
			st := 0
			if resp != nil {
				st = resp.StatusCode
			}
			t.Fatalf("agent handshake with Origin %q: %v (status %d), want 403", origin, err, st)
		}
	}
	// The native agent (no Origin) is still taken from loopback.
	cl, _ := client.New(n.URL)
	exposeAgent(t, cl, "shop", headerEcho(t))
	// With anonymous agents allowed, or with a token file, the Origin
	// decides nothing: a token (or the operator's choice) does.
	n2 := startNode(t, func(c *node.Config) { c.Expose.AnonymousAgents = true })
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n2.URL, "http")+"/agent?name=shop", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://app.example"}}})
	if err != nil {
		t.Fatalf("anonymous agents: handshake with an Origin refused: %v", err)
	}
	ws.CloseNow()
}

// TestAgentThroughAProxyOnThisHost: behind a reverse proxy on the same
// host every agent came from loopback, so without a token file anyone who
// reached the proxy could claim a name. An agent's handshake that a proxy
// passed on is refused under the loopback rule unless the proxy is
// trusted, and then the client it names must be on this host.
func TestAgentThroughAProxyOnThisHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	handshake := func(n *servertest.Node, hdr http.Header) int {
		t.Helper()
		ws, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.URL, "http")+"/agent?name=shop", &websocket.DialOptions{HTTPHeader: hdr})
		if err == nil {
			ws.CloseNow()
			return 101
		}
		if resp == nil {
			t.Fatalf("handshake %v: %v", hdr, err)
		}
		return resp.StatusCode
	}
	plain := startNode(t, nil)
	for _, h := range []http.Header{
		{"X-Forwarded-For": {"203.0.113.5"}},
		{"X-Forwarded-For": {"127.0.0.1"}},
		{"Forwarded": {"for=203.0.113.5"}},
		{"X-Real-Ip": {"203.0.113.5"}},
	} {
		if code := handshake(plain, h); code != 403 {
			t.Fatalf("handshake passed on by an untrusted proxy (%v): %d, want 403", h, code)
		}
	}
	behind := startNode(t, func(c *node.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	if code := handshake(behind, http.Header{"X-Forwarded-For": {"203.0.113.5"}}); code != 403 {
		t.Fatalf("remote client through a trusted proxy: %d, want 403", code)
	}
	if code := handshake(behind, http.Header{"X-Forwarded-For": {"127.0.0.1"}}); code != 101 {
		t.Fatalf("local client through a trusted proxy: %d, want 101", code)
	}
	// The native agent itself, on this host, is taken.
	cl, _ := client.New(behind.URL)
	exposeAgent(t, cl, "shop", headerEcho(t))
}
