package node_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/servertest"
)

// get sends a GET with Host host (the node's own when empty).
func get(t *testing.T, c *http.Client, base, host, path string, hdr ...string) result {
	t.Helper()
	req, err := http.NewRequest("GET", base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer res.Body.Close()
	var r result
	r.status, r.h = res.StatusCode, res.Header
	return r
}

// TestRateLimitExemptionsAreTheNodesOwn: /healthz, /readyz and /metrics
// are never rate limited, but only the node's own: on an expose agent's
// host every path is the agent's, and those three paths used to pass the
// limiter there too, so a client could send the agent unlimited requests.
func TestRateLimitExemptionsAreTheNodesOwn(t *testing.T) {
	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	cfg.RateLimit.PerAddr = 0.001
	cfg.RateLimit.PerAddrBurst = 1
	n := servertest.Start(t, cfg)
	c := &http.Client{}
	defer c.CloseIdleConnections()
	// The node's own endpoints: never limited, on any host (/metrics
	// answers only a Host naming this host without a token file).
	for range 5 {
		for _, host := range []string{"", "expose.test", "other.example"} {
			for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
				if r := get(t, c, n.URL, host, p); r.status != 200 && (p != "/metrics" || host == "" || r.status != 403) {
					t.Fatalf("%s%s: %d", host, p, r.status)
				}
			}
		}
	}
	// An agent's host: the burst of one, then 429 whatever the path.
	if r := get(t, c, n.URL, "shop.expose.test", "/healthz"); r.status != 502 {
		t.Fatalf("first request to the agent's host: %d", r.status)
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/"} {
		r := get(t, c, n.URL, "shop.expose.test", p)
		if r.status != 429 || r.h.Get("Retry-After") == "" {
			t.Fatalf("shop.expose.test%s past the burst: %d (Retry-After %q), want 429", p, r.status, r.h.Get("Retry-After"))
		}
	}
}

const secretToken = "SECRET-token-0123456789"

// TestNoSecretsInLogs runs requests carrying a scoped token in a header and
// in ?access_token=, a tunnel token, a signature and bodies through every
// front door, with the logger at debug level (the request log on): the
// logs name routes, statuses and paths, never a secret, a query string or
// a body.
func TestNoSecretsInLogs(t *testing.T) {
	var logs servertest.Logs
	pol, err := auth.Parse([]byte(`
[[token]]
name = "everything"
secret = "` + secretToken + `"
[[token.grant]]
actions = ["*"]
paths = ["/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := servertest.Config()
	cfg.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Policy = pol
	cfg.Tunnel.AccessToken = "SECRET-tunnel-token"
	cfg.Tunnel.SignatureSecret = "SECRET-signing-key"
	cfg.Expose.Domain = "expose.test"
	cfg.Relay.PickupTimeout = 50 * time.Millisecond
	cfg.Relay.PollTimeout = 50 * time.Millisecond
	n := servertest.Start(t, cfg)
	c := &http.Client{}
	defer c.CloseIdleConnections()
	bearer := []string{"Authorization", "Bearer " + secretToken}
	q := "?access_token=" + secretToken + "&SECRET-query=1"
	send := func(method, host, path, body string, hdr ...string) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, n.URL+path, rd)
		if host != "" {
			req.Host = host
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	send("POST", "", "/t/logged"+q, "SECRET-body-1")
	send("POST", "", "/t/logged", "SECRET-body-2", bearer...)
	send("POST", "", "/t/logged", "SECRET-body-3", "Authorization", "Bearer SECRET-tunnel-token")
	send("POST", "", "/t/logged", "SECRET-body-4", "X-Hub-Signature-256", "sha256=5ec2e7000000000000000000000000000000000000000000000000000000SECRET")
	send("GET", "", "/t/logged"+q, "")
	send("GET", "", "/t/logged", "", "Authorization", "Bearer SECRET-wrong-token")
	send("POST", "", "/t/bad!id"+q, "SECRET-body-5")
	send("POST", "", "/inbox/send"+q, `{"idempotencyKey":"SECRET-key-0001","destination":["b"],"body":"SECRET-body-6"}`, "From", "a")
	send("POST", "", "/inbox/send", `{"SECRET-broken`, append([]string{"From", "a"}, bearer...)...)
	send("POST", "", "/c/room"+q, "SECRET-body-7")
	send("GET", "", "/c/room"+q, "", "Accept", "text/event-stream", "Last-Event-ID", "SECRET-cursor")
	send("GET", "", "/client/nobody/x"+q, "")
	send("GET", "", "/client/nobody/x", "SECRET-body-8", bearer...)
	send("GET", "", "/server/request"+q+"&server=bot", "")
	send("POST", "", "/server/response"+q, "SECRET-body-9")
	send("GET", "", "/anything"+q, "", "X-Server-Name", "nobody")
	send("GET", "shop.expose.test", "/x"+q, "SECRET-body-10")
	send("GET", "", "/proxy/request/shop/x"+q, "", bearer...)
	send("GET", "", "/agent"+q+"&name=shop", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.URL, "http")+"/c/room"+q, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.Write(ctx, websocket.MessageText, []byte("SECRET-message"))
	ws.Close(websocket.StatusNormalClosure, "SECRET-reason")
	// A brickchain agent whose mandate token is refused.
	bc, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.URL, "http")+"/proxy/subscribe"+q, nil)
	if err != nil {
		t.Fatal(err)
	}
	bc.Write(ctx, websocket.MessageText, []byte(`{"@type":"https://proxy.brickchain.com/v1/registration-request.json","@id":"r1","mandateToken":"eyJhbGciOiJFUzI1NiJ9.eyJTRUNSRVQiOjF9.SECRETsignature"}`))
	for {
		if _, _, err := bc.Read(ctx); err != nil {
			break
		}
	}
	bc.CloseNow()
	// Shut down so that every handler has logged what it logs.
	if err := n.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, `"msg":"request"`) || !strings.Contains(out, `"path":"/t/logged"`) || !strings.Contains(out, "brickchain registration refused") {
		t.Fatalf("the request log is not on:\n%s", out)
	}
	for _, secret := range []string{"SECRET", "access_token", "eyJ"} {
		if i := strings.Index(out, secret); i >= 0 {
			start := max(0, strings.LastIndexByte(out[:i], '\n'))
			t.Errorf("logs contain %q: %s", secret, strings.SplitN(out[start:], "\n", 3)[1])
		}
	}
}

// TestSlowClientsAreCut: a client that trickles its request headers is
// disconnected after ReadHeaderTimeout, an idle keep-alive connection after
// IdleTimeout, and a header block larger than MaxHeaderBytes gets 431.
func TestSlowClientsAreCut(t *testing.T) {
	cfg := servertest.Config()
	cfg.ReadHeaderTimeout = 200 * time.Millisecond
	cfg.IdleTimeout = 200 * time.Millisecond
	cfg.MaxHeaderBytes = 4 << 10
	n := servertest.Start(t, cfg)
	closed := func(conn net.Conn, br *bufio.Reader) {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("connection still open: %v", err)
		}
	}
	// Headers that never end.
	conn, err := net.Dial("tcp", n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /t/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	closed(conn, bufio.NewReader(conn))
	// One request, then nothing.
	conn2, err := net.Dial("tcp", n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	fmt.Fprintf(conn2, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn2)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", res, err)
	}
	io.Copy(io.Discard, res.Body)
	closed(conn2, br)
	// Too many header bytes.
	req, _ := http.NewRequest("GET", n.URL+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("b", 8<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("large header block: %d, want 431", resp.StatusCode)
	}
}

// TestStatusIsNotReadableCrossOrigin: the status page and its JSON carry
// no CORS grant, so another site's script cannot read them, and the page
// has a Content-Security-Policy that loads nothing from elsewhere.
func TestStatusIsNotReadableCrossOrigin(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	c := &http.Client{}
	defer c.CloseIdleConnections()
	for _, p := range []string{"/", "/_postern/status", "/ops/nodes", "/metrics"} {
		r := get(t, c, n.URL, "", p, "Origin", "https://evil.example")
		if r.status != 200 || r.h.Get("Access-Control-Allow-Origin") != "" || r.h.Get("Access-Control-Allow-Credentials") != "" {
			t.Fatalf("%s: %d, CORS headers %v", p, r.status, r.h)
		}
	}
	r := get(t, c, n.URL, "", "/", "Origin", "https://evil.example")
	if csp := r.h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Fatalf("page CSP %q", csp)
	}
	// A preflight for the status is not answered with a grant either.
	req, _ := http.NewRequest("OPTIONS", n.URL+"/_postern/status", nil)
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight granted: %v", resp.Header)
	}
}

// TestNoPageCanBeFramed: every page postern serves (the status page at /
// and /_postern/, a channel's page, a tunnel message a browser opens)
// forbids framing, so another site cannot overlay it and have a person
// click in it (the status page publishes what a person types).
func TestNoPageCanBeFramed(t *testing.T) {
	cfg := servertest.Config()
	n := servertest.Start(t, cfg)
	c := &http.Client{}
	defer c.CloseIdleConnections()
	if r, err := do(c, "POST", n.URL+"/t/page", "<h1>hi</h1>"); err != nil || r.status != 201 {
		t.Fatalf("produce: %v %v", r, err)
	}
	for _, p := range []string{"/", "/_postern/", "/c/room", "/t/page"} {
		r := get(t, c, n.URL, "", p)
		if csp := r.h.Get("Content-Security-Policy"); r.status != 200 || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Fatalf("%s: %d, CSP %q", p, r.status, csp)
		}
	}
}
