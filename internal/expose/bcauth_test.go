package expose_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/node"
)

// TestBrickchainRegistrationNeedsAGrantUnderAPolicy: a signed registration
// proves only that the agent holds its own key, and anyone can make a key.
// With a token file, an agent that registered that way was served to users
// as any other, so under the README's advice for public sites (call on
// /expose/* granted to anonymous) any stranger could publish pages on the
// operator's domain, next to the real agents (and set cookies for the
// whole domain). Under a policy a brickchain id needs serve on
// /expose/<id>: from a token on the subscribe handshake (header or
// ?access_token=), or an anonymous grant naming the id, which only the
// holder of that key can register.
func TestBrickchainRegistrationNeedsAGrantUnderAPolicy(t *testing.T) {
	allowed, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	allowedID := thumbID(&allowed.PublicKey)
	policy, err := auth.Parse([]byte(`
[[token]]
name = "agents"
secret = "agent-secret-0123456789"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/*"]

[[anonymous.grant]]
actions = ["call"]
paths = ["/expose/*"]

[[anonymous.grant]]
actions = ["serve"]
paths = ["/expose/` + allowedID + `"]
`))
	if err != nil {
		t.Fatal(err)
	}
	n := startNode(t, func(c *node.Config) { c.Policy = policy })
	subscribe := func(query string, hdr http.Header, key *ecdsa.PrivateKey) (*websocket.Conn, brickchain.Frame) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.URL, "http")+"/proxy/subscribe"+query, &websocket.DialOptions{HTTPHeader: hdr})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { ws.CloseNow() })
		b, _ := json.Marshal(brickchain.RegistrationRequest{
			Base:         brickchain.NewBase(brickchain.TypeRegistrationRequest, "reg"),
			MandateToken: mintToken(t, key, time.Now(), n.URL, 60),
		})
		if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
			t.Fatal(err)
		}
		for {
			_, msg, err := ws.Read(ctx)
			if err != nil {
				t.Fatalf("no answer to the registration: %v", err)
			}
			f, err := brickchain.Decode(msg)
			if err != nil {
				t.Fatalf("frame %q: %v", msg, err)
			}
			if f.Type != brickchain.TypePing {
				return ws, f
			}
		}
	}
	// A stranger's key: refused with an error frame and 1008.
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ws, f := subscribe("", nil, stranger)
	if f.Type == brickchain.TypeRegistrationResponse || !strings.Contains(f.Error, "serve on /expose/"+thumbID(&stranger.PublicKey)) {
		t.Fatalf("stranger registered: %+v", f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("stranger's socket: %v, want 1008", err)
	}
	if resp, _ := do(t, n, "GET", "", "/proxy/request/"+thumbID(&stranger.PublicKey)+"/", nil); resp.StatusCode != 502 {
		t.Fatalf("stranger's id served: %d", resp.StatusCode)
	}
	// A token on the handshake, as a header or in the query.
	for _, c := range []struct {
		query string
		hdr   http.Header
	}{
		{"", http.Header{"Authorization": {"Bearer agent-secret-0123456789"}}},
		{"?access_token=agent-secret-0123456789", nil},
	} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if _, f := subscribe(c.query, c.hdr, key); f.Type != brickchain.TypeRegistrationResponse || f.KeyID != thumbID(&key.PublicKey) {
			t.Fatalf("agent with a token (%q %v): %+v", c.query, c.hdr, f)
		}
	}
	// An id the operator granted to anonymous: only that key registers it.
	if _, f := subscribe("", nil, allowed); f.Type != brickchain.TypeRegistrationResponse || f.KeyID != allowedID {
		t.Fatalf("allow-listed id: %+v", f)
	}
}
