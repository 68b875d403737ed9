package expose_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/node"
)

// TestWebsocketReadLimits: what the server reads from websockets is
// bounded. A user's message to a brickchain agent larger than the frame
// limit closes that user with 1009 and tears the stream down at the agent;
// an agent's message larger than 16 times the frame limit (larger ones up
// to it are scanned for their id and refused) closes the agent with 1009.
func TestWebsocketReadLimits(t *testing.T) {
	const limit = 4000
	n := startNode(t, func(c *node.Config) { c.Expose.Brickchain.MaxFrameBytes = limit })
	a := dialAgent(t, n)
	id := a.register(n, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type dialed struct {
		c   *websocket.Conn
		err error
	}
	dc := make(chan dialed, 1)
	go func() {
		c, _, err := wsDial(ctx, n, id+"."+domain, "/ws", http.Header{})
		dc <- dialed{c, err}
	}()
	req, _ := a.next()
	a.send(brickchain.WSResponse{Base: brickchain.NewBase(brickchain.TypeWSResponse, req.ID), OK: true})
	d := <-dc
	if d.err != nil {
		t.Fatal(d.err)
	}
	defer d.c.CloseNow()
	d.c.Write(ctx, websocket.MessageText, []byte(strings.Repeat("u", limit+1)))
	if _, _, err := d.c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("user over the limit: %v, want 1009", err)
	}
	if f, raw := a.next(); f.Type != brickchain.TypeWSTeardown || f.ID != req.ID {
		t.Fatalf("agent got %s, want the stream's teardown", raw)
	}
	// The agent: far over the limit.
	a.ws.Write(ctx, websocket.MessageText, []byte(strings.Repeat("a", 16*limit+4096+1)))
	if code := a.closed(); code != websocket.StatusMessageTooBig {
		t.Fatalf("agent over the limit: %v, want 1009", code)
	}
}
