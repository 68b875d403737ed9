package expose_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/server"
)

// TestAgentHandshakeFromABrowserRefused: without a token file only agents
// on the server's own host may claim a name, a rule a web page open in a
// browser on that host would pass (websockets are not bound by the
// same-origin policy). Browsers always send Origin on a websocket
// handshake and the native agent never does, so a handshake with an
// Origin is refused there.
func TestAgentHandshakeFromABrowserRefused(t *testing.T) {
	n := node(t, nil)
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
	n2 := node(t, func(c *server.Config) { c.Expose.AnonymousAgents = true })
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n2.URL, "http")+"/agent?name=shop", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://app.example"}}})
	if err != nil {
		t.Fatalf("anonymous agents: handshake with an Origin refused: %v", err)
	}
	ws.CloseNow()
}
