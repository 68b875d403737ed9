package expose_test

import (
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/auth/authtest"
	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// leakSecrets are the user tokens of leakPolicy: one plain, one holding
// "+", which a query may read as a space.
var leakSecrets = []string{"user-secret-0123456789", "plus+user+secret+0123"}

// leakPolicy lets the agent token serve any name and the user tokens call
// any agent.
func leakPolicy(t *testing.T) *auth.Policy {
	t.Helper()
	p, err := auth.Parse([]byte(`
[[token]]
name = "agent"
secret = "agent-secret-0123456789"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/*"]

[[token]]
name = "user"
secret = "user-secret-0123456789"
[[token.grant]]
actions = ["call"]
paths = ["/expose/*"]

[[token]]
name = "plus"
secret = "plus+user+secret+0123"
[[token.grant]]
actions = ["call"]
paths = ["/expose/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// recorder is a local service that keeps every request it is sent, as
// bytes on the wire would show it: request line, headers, body.
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (rec *recorder) serve(t *testing.T) string {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var b strings.Builder
		b.WriteString(r.Method + " " + r.RequestURI + "\n")
		r.Header.Write(&b)
		b.Write(body)
		rec.mu.Lock()
		rec.got = append(rec.got, b.String())
		rec.mu.Unlock()
		io.WriteString(w, "recorded")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func (rec *recorder) last() string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.got) == 0 {
		return ""
	}
	return rec.got[len(rec.got)-1]
}

// userRequest sends a user request with presentation p to host and path
// (query appended raw) and returns the status.
func userRequest(t *testing.T, n *servertest.Node, host, path string, p authtest.Presentation) (int, string) {
	t.Helper()
	target := n.URL + path
	if p.Query != "" {
		target += "?" + p.Query
	}
	req, err := http.NewRequest("POST", target, strings.NewReader("body of the user"))
	if err != nil {
		t.Fatalf("%s: %v", p.Name, err)
	}
	if req.URL.RawQuery != p.Query {
		t.Fatalf("%s: the client rewrote the query %q to %q", p.Name, p.Query, req.URL.RawQuery)
	}
	if host != "" {
		req.Host = host
	}
	for k, vs := range p.Header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", p.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestTokenNeverReachesANativeAgentsService: whatever spelling of the
// token postern accepts, the service behind a native agent never sees it.
// The token parser read the query with url.Query (which decodes key names
// and skips pairs holding ";") while the code removing the token looked
// for the literal "access_token" and left a query that did not parse
// untouched: "?access%5Ftoken=SECRET" was authorized and reached the
// service, which collected its callers' tokens.
func TestTokenNeverReachesANativeAgentsService(t *testing.T) {
	n := startNode(t, func(c *node.Config) { c.Policy = leakPolicy(t) })
	rec := &recorder{}
	cl, _ := client.New(n.URL, client.WithToken("agent-secret-0123456789"))
	exposeAgent(t, cl, "shop", rec.serve(t))
	for _, secret := range leakSecrets {
		for _, p := range authtest.Presentations(secret) {
			for _, route := range []struct{ host, path string }{{"shop." + domain, "/x"}, {"", "/proxy/request/shop/x"}} {
				status, body := userRequest(t, n, route.host, route.path, p)
				if status != 200 || body != "recorded" {
					t.Fatalf("%s via %s%s: %d %q, want the request authorized", p.Name, route.host, route.path, status, body)
				}
				if leaks := authtest.Leaks(secret, rec.last()); len(leaks) > 0 {
					t.Fatalf("%s via %s%s: the service received the token:\n%s", p.Name, route.host, route.path, leaks[0])
				}
			}
		}
	}
	// Without a token nothing is relayed.
	if status, _ := userRequest(t, n, "shop."+domain, "/x", authtest.Presentation{Name: "none"}); status != 403 {
		t.Fatalf("no token: %d", status)
	}
}

// TestTokenNeverReachesABrickchainAgent: the same for brickchain agents,
// whose http-request and ws-request frames carry the query and headers.
func TestTokenNeverReachesABrickchainAgent(t *testing.T) {
	n := startNode(t, func(c *node.Config) { c.Policy = leakPolicy(t) })
	a := dialAgentWith(t, n, http.Header{"Authorization": {"Bearer agent-secret-0123456789"}})
	id := a.register(n, "")
	host := id + "." + domain
	for _, secret := range leakSecrets {
		for _, p := range authtest.Presentations(secret) {
			for _, route := range []struct{ host, path string }{{host, "/x"}, {"", "/proxy/request/" + id + "/x"}} {
				frames := make(chan []byte, 1)
				go func() {
					f, raw := a.next()
					frames <- raw
					a.send(brickchain.HTTPResponse{Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 200})
				}()
				status, body := userRequest(t, n, route.host, route.path, p)
				raw := <-frames
				if status != 200 {
					t.Fatalf("%s via %s%s: %d %q, want the request authorized", p.Name, route.host, route.path, status, body)
				}
				if leaks := authtest.Leaks(secret, frameParts(t, raw)...); len(leaks) > 0 {
					t.Fatalf("%s via %s%s: the agent received the token: %s", p.Name, route.host, route.path, raw)
				}
			}
			// A user websocket becomes a ws-request frame.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			path := "/sock"
			if p.Query != "" {
				path += "?" + p.Query
			}
			dialed := make(chan error, 1)
			go func() {
				c, _, err := wsDial(ctx, n, host, path, p.Header.Clone())
				if c != nil {
					c.CloseNow()
				}
				dialed <- err
			}()
			f, raw := a.next()
			if f.Type != brickchain.TypeWSRequest {
				t.Fatalf("%s: want ws-request, got %s", p.Name, raw)
			}
			if leaks := authtest.Leaks(secret, frameParts(t, raw)...); len(leaks) > 0 {
				t.Fatalf("%s: the agent's ws-request holds the token: %s", p.Name, raw)
			}
			a.send(brickchain.WSResponse{Base: brickchain.NewBase(brickchain.TypeWSResponse, f.ID), OK: true})
			if err := <-dialed; err != nil {
				t.Fatalf("%s: websocket: %v", p.Name, err)
			}
			if f, _ := a.next(); f.Type != brickchain.TypeWSTeardown {
				t.Fatalf("%s: want ws-teardown, got %+v", p.Name, f)
			}
			cancel()
		}
	}
}

// frameParts is a frame as sent, plus its decoded body.
func frameParts(t *testing.T, raw []byte) []string {
	t.Helper()
	f, err := brickchain.Decode(raw)
	if err != nil {
		t.Fatalf("frame %s: %v", raw, err)
	}
	body, _ := base64.StdEncoding.DecodeString(f.Body)
	return []string{string(raw), f.URL, f.Query, string(body)}
}
