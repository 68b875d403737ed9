package client_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

// seen is a local service that records what reached it.
type seen struct {
	mu   sync.Mutex
	reqs []http.Header
	url  string
}

func newSeen(t *testing.T) *seen {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &seen{url: "http://" + ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.reqs = append(s.reqs, r.Header.Clone())
		s.mu.Unlock()
		w.Header().Set("X-Frame-Options", "SAMEORIGIN") // the rule's header wins
		io.WriteString(w, "hello from "+r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *seen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

func (s *seen) last() http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[len(s.reqs)-1]
}

// startExpose runs an agent with o until the test ends; it returns once
// the agent is ready, or the error Expose returned.
func startExpose(t testing.TB, c *client.Client, o client.ExposeOptions) error {
	t.Helper()
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{}, 1)
	o.OnReady = func(string) {
		select {
		case ready <- struct{}{}:
		default:
		}
	}
	done := make(chan error, 1)
	go func() { done <- c.Expose(ctx, o) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		return err
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Expose: %v", err)
		}
	})
	return nil
}

type answer struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, hc *http.Client, url, host string, hdr ...string) answer {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// TestExposeAccessRules: the server enforces an agent's basic auth,
// address allow-list and response headers before a request reaches the
// agent, by Host and by path; the credentials and postern's own client
// header never reach the service, and a user cannot choose the address
// the allow-list sees.
func TestExposeAccessRules(t *testing.T) {
	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	n := servertest.Start(t, cfg)
	c, err := client.New(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	local := newSeen(t)
	port := n.URL[strings.LastIndex(n.URL, ":"):]
	if err := startExpose(t, c, client.ExposeOptions{
		Name: "guarded", Local: local.url,
		BasicAuth:       "ann:s3cret:pass",
		AllowCIDR:       []string{"127.0.0.2", "10.0.0.0/8"},
		ResponseHeaders: http.Header{"X-Frame-Options": {"DENY"}, "Cache-Control": {"no-store"}},
	}); err != nil {
		t.Fatal(err)
	}
	from1, from2 := servertest.ClientFrom(t, "127.0.0.1"), servertest.ClientFrom(t, "127.0.0.2")
	host := "guarded.expose.test" + port
	const good = "Basic YW5uOnMzY3JldDpwYXNz" // ann:s3cret:pass

	// Outside the allow-list: 403, whatever the credentials or a claimed
	// client address.
	for _, a := range []answer{
		get(t, from1, n.URL+"/", host, "Authorization", good),
		get(t, from1, n.URL+"/", host, "Authorization", good, "X-Postern-Client", "127.0.0.2", "X-Forwarded-For", "127.0.0.2"),
		get(t, from1, n.URL+"/proxy/request/guarded/", "", "Authorization", good),
	} {
		if a.status != http.StatusForbidden || a.body != "forbidden: your address may not reach this site" {
			t.Fatalf("from 127.0.0.1: %d %q %v", a.status, a.body, a.header)
		}
	}
	// Inside it, without or with wrong credentials: 401 asking for them.
	for _, auth := range []string{"", "Basic YW5uOndyb25n", "Bearer s3cret", "Basic !!!"} {
		var hdr []string
		if auth != "" {
			hdr = []string{"Authorization", auth}
		}
		a := get(t, from2, n.URL+"/", host, hdr...)
		if a.status != http.StatusUnauthorized || a.header.Get("WWW-Authenticate") != `Basic realm="guarded", charset="UTF-8"` ||
			a.body != "this site needs a user name and password" {
			t.Fatalf("credentials %q: %d %q %v", auth, a.status, a.body, a.header)
		}
	}
	if local.count() != 0 {
		t.Fatalf("%d refused requests reached the service", local.count())
	}
	if got := n.Metric(t, "postern_expose_requests_total"); got != 7 {
		t.Fatalf("postern_expose_requests_total = %v, want the 7 refusals", got)
	}
	// With them: served, with the rule's headers, and the service sees
	// neither the credentials nor postern's client header.
	for _, a := range []answer{
		get(t, from2, n.URL+"/in", host, "Authorization", good),
		get(t, from2, n.URL+"/proxy/request/guarded/in", "", "Authorization", good, "X-Postern-Client", "10.9.9.9"),
		get(t, from2, n.URL+"/in", host, "Authorization", good, "Authorization", "basic\tYW5uOnMzY3JldDpwYXNz", "Authorization", " BASIC YW5uOnMzY3JldDpwYXNz"),
	} {
		if a.status != 200 || a.body != "hello from /in" || a.header.Get("X-Frame-Options") != "DENY" || a.header.Get("Cache-Control") != "no-store" {
			t.Fatalf("with credentials: %d %q %v", a.status, a.body, a.header)
		}
		h := local.last()
		if h.Get("Authorization") != "" || h.Get("X-Postern-Client") != "" || h.Get("X-Forwarded-For") != "127.0.0.2" {
			t.Fatalf("the service saw %v", h)
		}
	}

	// An agent with no rules is open as before.
	if err := startExpose(t, c, client.ExposeOptions{Name: "open", Local: local.url}); err != nil {
		t.Fatal(err)
	}
	if a := get(t, from1, n.URL+"/", "open.expose.test"+port, "Authorization", "Basic YW5uOnMzY3JldA=="); a.status != 200 || a.header.Get("X-Frame-Options") != "SAMEORIGIN" {
		t.Fatalf("open agent: %d %q %v", a.status, a.body, a.header)
	}
	if got := local.last().Get("Authorization"); got != "Basic YW5uOnMzY3JldA==" {
		t.Fatalf("an agent without basic auth lost the service's own credentials: %q", got)
	}

	// Rules that make no sense never leave the agent.
	for _, o := range []client.ExposeOptions{
		{Name: "bad", Local: local.url, BasicAuth: "no-colon"},
		{Name: "bad", Local: local.url, AllowCIDR: []string{"10.0.0.0/40"}},
		{Name: "bad", Local: local.url, ResponseHeaders: http.Header{"Content-Length": {"1"}}},
	} {
		if err := c.Expose(context.Background(), o); err == nil || !strings.HasPrefix(err.Error(), "expose: ") {
			t.Errorf("Expose(%+v) = %v", o, err)
		}
	}
}

// TestExposeAccessRulesUnderAPolicy: a token file may require or forbid
// access rules; an agent whose rules do not meet its grant is refused for
// good with a 403 that says which, and one whose rules do serves.
func TestExposeAccessRulesUnderAPolicy(t *testing.T) {
	tokens := filepath.Join(t.TempDir(), "tokens.toml")
	os.WriteFile(tokens, []byte(`
[[token]]
name = "agent"
secret = "agent-secret-0123456789"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/*"]
require = ["basic-auth"]
forbid = ["response-header"]

[[anonymous.grant]]
actions = ["call"]
paths = ["/expose/*"]
`), 0o600)
	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	cfg.TokenFile = tokens
	n := servertest.Start(t, cfg)
	c, err := client.New(n.URL, client.WithToken("agent-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	local := newSeen(t)
	for o, want := range map[*client.ExposeOptions]string{
		{Name: "a", Local: local.url}: "the grant of serve on /expose/a requires basic-auth",
		{Name: "b", Local: local.url, BasicAuth: "u:p", ResponseHeaders: http.Header{"X-A": {"1"}}}: "the grant of serve on /expose/b forbids response-header",
	} {
		err := startExpose(t, c, *o)
		var ce *client.Error
		if !errors.As(err, &ce) || ce.StatusCode != http.StatusForbidden || !strings.HasPrefix(ce.Message, want) {
			t.Fatalf("agent %s: %v, want 403 %q", o.Name, err, want)
		}
	}
	if err := startExpose(t, c, client.ExposeOptions{Name: "c", Local: local.url, BasicAuth: "u:p"}); err != nil {
		t.Fatal(err)
	}
	port := n.URL[strings.LastIndex(n.URL, ":"):]
	if a := get(t, http.DefaultClient, n.URL+"/", "c.expose.test"+port); a.status != http.StatusUnauthorized {
		t.Fatalf("without credentials: %d %q", a.status, a.body)
	}
	if a := get(t, http.DefaultClient, n.URL+"/", "c.expose.test"+port, "Authorization", "Basic dTpw"); a.status != 200 {
		t.Fatalf("with credentials: %d %q", a.status, a.body)
	}
}

// TestExposeRefusesAServerThatIgnoresItsRules: a server that takes the
// agent without confirming the access rules it asked for (one from before
// them) is left at once, for good: the service is never published
// unguarded.
func TestExposeRefusesAServerThatIgnoresItsRules(t *testing.T) {
	var handlers sync.WaitGroup
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Done()
		w.Header().Set(client.PublicURLHeader, "http://old.example")
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ws.Read(r.Context()) // until the agent goes
		ws.CloseNow()
	}))
	defer old.Close()
	defer handlers.Wait()
	c, _ := client.New(old.URL)
	local := newSeen(t)
	err := c.Expose(context.Background(), client.ExposeOptions{
		Name: "x", Local: local.url, AllowCIDR: []string{"10.0.0.0/8"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnReady: func(string) { t.Error("the agent reported ready") },
	})
	if !errors.Is(err, client.ErrAccessNotEnforced) || !strings.Contains(err.Error(), "allow-cidr not confirmed") {
		t.Fatalf("Expose = %v", err)
	}
}
