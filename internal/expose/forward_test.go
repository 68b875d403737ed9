package expose_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/servertest"
)

// answerAll makes a brickchain agent answer every http-request with 204
// until the test ends.
func (a *agent) answerAll() {
	go func() {
		for b := range a.frames {
			f, err := brickchain.Decode(b)
			if err != nil || f.Type != brickchain.TypeHTTPRequest {
				continue
			}
			out, _ := json.Marshal(brickchain.HTTPResponse{Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 204})
			a.ws.Write(context.Background(), websocket.MessageText, out)
		}
	}()
}

// TestForgedForwardMarkKeepsTheClientRateLimit: X-Postern-Forwarded marks
// a request one node forwarded to another, but any user can send it. The
// per-client limit of brickchain ids skipped requests that carried it, so
// the header lifted the limit on the node holding the agent.
func TestForgedForwardMarkKeepsTheClientRateLimit(t *testing.T) {
	n := startNode(t, func(c *node.Config) {
		c.Expose.Brickchain.ClientRate = 2
		c.Expose.Brickchain.ClientRatePeriod = time.Hour
	})
	a := dialAgent(t, n)
	id := a.register(n, "")
	a.answerAll()
	host := id + "." + domain
	for i := range 2 {
		if resp, _ := do(t, n, "GET", host, "/", nil); resp.StatusCode != 204 {
			t.Fatalf("request %d: %d", i+1, resp.StatusCode)
		}
	}
	for _, path := range []string{"", "/proxy/request/" + id + "/"} {
		h := host
		if path != "" {
			h = ""
		} else {
			path = "/"
		}
		resp, body := do(t, n, "GET", h, path, nil, relay.ForwardedHeader, "expose")
		if resp.StatusCode != 429 || body != "Too many requests" {
			t.Fatalf("forged forward mark on %s%s: %d %q, want 429", h, path, resp.StatusCode, body)
		}
	}
}

// TestForgedForwardMarkIsAuthorized: the receiving node authorizes a
// forwarded request as a direct one, so the mark lets nobody past the token
// policy, by Host or by path.
func TestForgedForwardMarkIsAuthorized(t *testing.T) {
	policy := shopPolicy(t)
	n := startNode(t, func(c *node.Config) { c.Policy = policy })
	cl, _ := client.New(n.URL, client.WithToken("agent-secret-0123456789"))
	exposeAgent(t, cl, "shop", headerEcho(t))
	for _, c := range []struct{ host, path string }{{"shop." + domain, "/x"}, {"", "/proxy/request/shop/x"}} {
		for _, mark := range []string{"expose", "relay", "1"} {
			resp, body := do(t, n, "GET", c.host, c.path, nil, relay.ForwardedHeader, mark)
			if resp.StatusCode != 403 {
				t.Fatalf("%s%s with %s: %s and no token: %d %q, want 403", c.host, c.path, relay.ForwardedHeader, mark, resp.StatusCode, body)
			}
		}
		resp, body := do(t, n, "GET", c.host, c.path, nil, relay.ForwardedHeader, "expose", "Authorization", "Bearer user-secret-0123456789")
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "path=/x query= ") || !strings.Contains(body, " auth= ") {
			t.Fatalf("%s%s with a token: %d %q", c.host, c.path, resp.StatusCode, body)
		}
		// A token in the query authorizes too, and never reaches the
		// service either.
		resp, body = do(t, n, "GET", c.host, c.path+"?a=1&access_token=user-secret-0123456789", nil)
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "path=/x query=a=1 ") {
			t.Fatalf("%s%s with ?access_token=: %d %q", c.host, c.path, resp.StatusCode, body)
		}
	}
}

// TestForgedForwardMarkCannotSpoofTheClientAddress: a direct request's
// X-Forwarded-For ends with the address postern saw, whatever the user
// wrote. A forwarding mark that no node signed is ignored (and logged), so
// the user's hops are dropped as on any direct request; before the cluster
// secret, the mark kept the user's hops in front of the address postern
// saw, so a service reading the first hop saw one of the user's choosing.
func TestForgedForwardMarkCannotSpoofTheClientAddress(t *testing.T) {
	logs := &servertest.Logs{}
	n := startNode(t, func(c *node.Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	cl, _ := client.New(n.URL)
	exposeAgent(t, cl, "shop", headerEcho(t))
	for _, hdr := range [][]string{
		{"X-Forwarded-For", "203.0.113.7"},
		{"X-Forwarded-For", "203.0.113.7", relay.ForwardedHeader, "expose"},
		{"X-Forwarded-For", "203.0.113.7", relay.ForwardedHeader, "expose; node=a; t=1; sig=AAAA"},
		{relay.ForwardedHeader, "expose"},
	} {
		resp, body := do(t, n, "GET", "shop."+domain, "/", nil, hdr...)
		if resp.StatusCode != 200 || !strings.Contains(body, " xff=127.0.0.1 ") || !strings.HasSuffix(body, " mark=") {
			t.Fatalf("headers %q: %d %q, want xff=127.0.0.1 and no mark", hdr, resp.StatusCode, body)
		}
	}
	if !strings.Contains(logs.String(), "ignored a forwarding mark that does not come from a node") {
		t.Fatalf("forged marks not logged: %s", logs.String())
	}
}
