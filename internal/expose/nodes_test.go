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
	"github.com/postern/postern/internal/relay/relaytest"
	"github.com/postern/postern/internal/server"
)

// TestTwoNodes connects agents to node A and sends their users to node B,
// which finds them in the node directory and forwards: plain HTTP to a
// native agent, and a websocket to a brickchain agent, which node A relays
// message by message.
func TestTwoNodes(t *testing.T) {
	dir := relaytest.NewDirectory()
	shared := func(c *server.Config) { c.Directory = dir }
	a, b := node(t, shared), node(t, shared)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	cl, _ := client.New(a.URL)
	exposeAgent(t, cl, "far", localBackend(t))
	if err := dir.WaitFor(ctx, "expose", "far", 1); err != nil {
		t.Fatalf("native agent never listed: %v", err)
	}
	resp, body := do(t, b, "GET", "far."+domain, "/x", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "local far."+domain) {
		t.Fatalf("through node B: %d %q", resp.StatusCode, body)
	}

	ag := dialAgent(t, a)
	id := ag.register(a, "")
	if err := dir.WaitFor(ctx, "expose", id, 1); err != nil {
		t.Fatalf("brickchain agent never listed: %v", err)
	}
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
