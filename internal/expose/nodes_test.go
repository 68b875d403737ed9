package expose_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/relaytest"
	"github.com/postern/postern/internal/servertest"
)

// TestTwoNodes connects agents to node A and sends their users to node B,
// which finds them in the node directory and forwards: plain HTTP to a
// native agent, and a websocket to a brickchain agent, which node A relays
// message by message. The nodes share the in-memory directory of
// relaytest, or the Redis engine's on a real redis-server and a real Redis
// Cluster.
func TestTwoNodes(t *testing.T) {
	t.Run("directory", func(t *testing.T) {
		dir := relaytest.NewDirectory()
		testTwoNodes(t, func(c *node.Config) { c.Directory = dir })
	})
	servertest.ForEachSharedEngine(t, func(t *testing.T, e servertest.Engine) {
		testTwoNodes(t, func(c *node.Config) { c.Store = e.Store })
	})
}

func testTwoNodes(t *testing.T, shared func(*node.Config)) {
	a, b := startNode(t, shared), startNode(t, shared)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	listed := func(name string) {
		t.Helper()
		select {
		case <-a.ExposeAnnounced(name):
		case <-ctx.Done():
			t.Fatalf("agent %s never listed", name)
		}
	}

	cl, _ := client.New(a.URL)
	exposeAgent(t, cl, "far", localBackend(t))
	listed("far")
	resp, body := do(t, b, "GET", "far."+domain, "/x", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "local far."+domain) {
		t.Fatalf("through node B: %d %q", resp.StatusCode, body)
	}

	ag := dialAgent(t, a)
	id := ag.register(a, "")
	listed(id)
	dc := make(chan *websocket.Conn, 1)
	go func() {
		c, r, err := wsDial(ctx, b, id+"."+domain, "/sock", nil)
		if err != nil {
			if r != nil {
				msg, _ := io.ReadAll(r.Body)
				t.Errorf("dial via node B: %v %d %s", err, r.StatusCode, msg)
			} else {
				t.Errorf("dial via node B: %v", err)
			}
		}
		dc <- c
	}()
	req, _ := ag.next()
	if req.Type != brickchain.TypeWSRequest {
		t.Fatalf("want ws-request, got %+v", req)
	}
	ag.send(brickchain.WSResponse{Base: brickchain.NewBase(brickchain.TypeWSResponse, req.ID), OK: true})
	uc := <-dc
	if uc == nil {
		return
	}
	defer uc.CloseNow()
	uc.Write(ctx, websocket.MessageText, []byte("over two nodes"))
	if f, _ := ag.next(); f.Type != brickchain.TypeWSMessage || f.Body != "over two nodes" {
		t.Fatalf("agent got %+v", f)
	}
	ag.send(brickchain.WSMessage{Base: brickchain.NewBase(brickchain.TypeWSMessage, req.ID), MessageType: 1, Body: "and back"})
	if _, m, err := uc.Read(ctx); err != nil || string(m) != "and back" {
		t.Fatalf("user got %q %v", m, err)
	}
	uc.Close(websocket.StatusNormalClosure, "")
	if f, _ := ag.next(); f.Type != brickchain.TypeWSTeardown {
		t.Fatalf("want teardown, got %+v", f)
	}
}

// TestForwardingMarksAreSigned: nodes sharing the cluster secret forward
// with a signed mark, so the holding node keeps the hops the forwarding
// node saw; a node with another secret is not believed (its mark is
// dropped and counted, and the request is served as a direct one). A
// user's token in the header travels to the holding node, which
// authorizes the request and removes it before the service.
func TestForwardingMarksAreSigned(t *testing.T) {
	dir := relaytest.NewDirectory()
	policy := shopPolicy(t)
	shared := func(secret string) func(c *node.Config) {
		return func(c *node.Config) { c.Directory, c.Policy, c.ClusterSecret = dir, policy, secret }
	}
	a := startNode(t, shared("the-cluster-secret-0123456789"))
	b := startNode(t, shared("the-cluster-secret-0123456789"))
	other := startNode(t, shared("another-cluster-secret-0123456789"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, _ := client.New(a.URL, client.WithToken("agent-secret-0123456789"))
	exposeAgent(t, cl, "shop", headerEcho(t))
	if err := dir.WaitFor(ctx, "expose", "shop", 1); err != nil {
		t.Fatalf("agent never listed: %v", err)
	}
	user := []string{"Authorization", "Bearer user-secret-0123456789", "X-Forwarded-For", "203.0.113.7"}
	resp, body := do(t, b, "GET", "shop."+domain, "/x?q=1", nil, user...)
	if resp.StatusCode != 200 || body != "path=/x query=q=1 xff=127.0.0.1, 127.0.0.1 auth= mark=" {
		t.Fatalf("through node B: %d %q", resp.StatusCode, body)
	}
	if got := a.Metric(t, "postern_cluster_marks_dropped_total"); got != 0 {
		t.Fatalf("node A dropped %v marks of node B", got)
	}
	resp, body = do(t, other, "GET", "shop."+domain, "/x?q=1", nil, user...)
	if resp.StatusCode != 200 || body != "path=/x query=q=1 xff=127.0.0.1 auth= mark=" {
		t.Fatalf("through the node with another secret: %d %q", resp.StatusCode, body)
	}
	if got := a.Metric(t, "postern_cluster_marks_dropped_total"); got != 1 {
		t.Fatalf("node A dropped %v marks, want the other node's", got)
	}
	// Without a token, node B forwards, and node A refuses.
	if resp, _ := do(t, b, "GET", "shop."+domain, "/x", nil); resp.StatusCode != 403 {
		t.Fatalf("no token through node B: %d", resp.StatusCode)
	}
	// A mark no node signed is dropped, and the request is served from
	// the node's own agents only: never forwarded, so two nodes that do
	// not share a secret never pass a request back and forth.
	resp, body = do(t, b, "GET", "shop."+domain, "/x", nil, append(user, relay.ForwardedHeader, "expose")...)
	if resp.StatusCode != 502 || !strings.Contains(body, "no agent") {
		t.Fatalf("forged mark on node B: %d %q, want 502 from node B", resp.StatusCode, body)
	}
}
