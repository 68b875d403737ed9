package expose_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/relaytest"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// TestMandateTokenRegistersFromOneConnection: a mandate token is a bearer
// credential for its lifetime, and postern remembered none, so a token
// captured on its way registered the same id from another connection and
// took a share of its users. Now a token registers from the connection
// that used it first only (again there: a second session, a renewal),
// on every node sharing the engine, until it expires.
func TestMandateTokenRegistersFromOneConnection(t *testing.T) {
	url := redistest.URL(t)
	dir := relaytest.NewDirectory()
	const base = "http://proxy.test"
	shared := func(c *node.Config) { c.Store, c.Directory, c.Expose.BaseURL = url, dir, base }
	a, b := startNode(t, shared), startNode(t, shared)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	token := mintToken(t, key, time.Now(), base, 60)
	register := func(ag *agent, session string) brickchain.Frame {
		t.Helper()
		ag.send(brickchain.RegistrationRequest{
			Base:         brickchain.NewBase(brickchain.TypeRegistrationRequest, "reg-"+session),
			MandateToken: token, Session: session,
		})
		f, _ := ag.next()
		return f
	}
	first := dialAgent(t, a)
	if f := register(first, ""); f.Type != brickchain.TypeRegistrationResponse || f.KeyID != thumbID(&key.PublicKey) {
		t.Fatalf("first registration: %+v", f)
	}
	// The same connection: another session, and the same id again.
	if f := register(first, "second"); f.Type != brickchain.TypeRegistrationResponse {
		t.Fatalf("second session on the same connection: %+v", f)
	}
	if f := register(first, ""); f.Type != brickchain.TypeRegistrationResponse {
		t.Fatalf("renewal on the same connection: %+v", f)
	}
	// Another connection, on this node or another, with the same token.
	for _, n := range []*servertest.Node{a, b} {
		ag := dialAgent(t, n)
		if f := register(ag, ""); f.Type != brickchain.TypeError || !strings.Contains(f.Error, "already used") {
			t.Fatalf("replayed token on %s: %+v", n.URL, f)
		}
		if code := ag.closed(); code != websocket.StatusPolicyViolation {
			t.Fatalf("replaying agent on %s: close %d, want 1008", n.URL, code)
		}
	}
	// A fresh token of the same key registers from anywhere.
	token = mintToken(t, key, time.Now(), base, 60)
	if f := register(dialAgent(t, b), ""); f.Type != brickchain.TypeRegistrationResponse || f.KeyID != thumbID(&key.PublicKey) {
		t.Fatalf("fresh token: %+v", f)
	}
}
