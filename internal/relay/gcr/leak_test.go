package gcr_test

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/auth/authtest"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/gcr"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
)

// TestTokenNeverReachesARelayBackend: whatever spelling of the token
// postern accepts, the backend a relay client serves never sees it. The
// relay client served "http://invalid/r?access%5Ftoken=SECRET" to its
// backend: the parser that authorized the request decoded key names, the
// code that removed the token did not.
func TestTokenNeverReachesARelayBackend(t *testing.T) {
	secrets := []string{"user-secret-0123456789", "plus+user+secret+0123"}
	pol, err := auth.Parse([]byte(tokenFile + `
[[token]]
name = "plus"
secret = "plus+user+secret+0123"
[[token.grant]]
actions = ["call"]
paths = ["/relay/bot"]
`))
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, func(c *node.Config) { c.Policy = pol; c.Relay.PollTimeout = 20 * time.Millisecond })
	var mu sync.Mutex
	var last string
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var b strings.Builder
		b.WriteString(r.Method + " " + r.RequestURI + "\n")
		r.Header.Write(&b)
		b.Write(body)
		mu.Lock()
		last = b.String()
		mu.Unlock()
		io.WriteString(w, "recorded")
	})
	e.runClient("bot", be, func(o *gcrclient.Options) { o.Token = "robot-secret-0123456789" })
	for _, secret := range secrets {
		for _, p := range authtest.Presentations(secret) {
			hdr := []string{}
			for k, vs := range p.Header {
				for _, v := range vs {
					hdr = append(hdr, k, v)
				}
			}
			q := ""
			if p.Query != "" {
				q = "?" + p.Query
			}
			for _, route := range []struct {
				path string
				hdr  []string
			}{
				{"/client/bot/r" + q, hdr},
				{"/pkg.Svc/Method" + q, append([]string{gcr.ServerNameHeader, "bot"}, hdr...)},
			} {
				r := e.do("POST", route.path, strings.NewReader("body of the user"), route.hdr...)
				if r.status != 200 || r.body != "recorded" {
					t.Fatalf("%s via %s: %d %q, want the request authorized", p.Name, route.path, r.status, r.body)
				}
				mu.Lock()
				got := last
				mu.Unlock()
				if leaks := authtest.Leaks(secret, got); len(leaks) > 0 {
					t.Fatalf("%s via %s: the backend received the token:\n%s", p.Name, route.path, got)
				}
			}
		}
	}
}
