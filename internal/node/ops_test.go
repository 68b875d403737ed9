package node_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// opsPaths are the endpoints behind the ops grant, with a piece of what
// each answers.
var opsPaths = map[string]string{
	"/metrics":         "postern_",
	"/ops/nodes":       `"self"`,
	"/_postern/status": `"node"`,
	"/_postern/":       "<html",
	"/":                "<html",
}

// fetch sends GET path to base with hdr (name, value pairs; "Host" sets
// the Host) and returns the status and body.
func fetch(t *testing.T, base, path string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Add(hdr[i], hdr[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestOpsOnLoopbackWithoutATokenFile: without a token file the ops
// endpoints answer clients on this host, and only them: not a request a
// proxy on this host passed on (X-Forwarded-For from a peer that is not a
// trusted proxy), nor one whose Host names another site (a web page that
// rebound its name to 127.0.0.1). Health checks answer everyone.
func TestOpsOnLoopbackWithoutATokenFile(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	for path, want := range opsPaths {
		if code, body := fetch(t, n.URL, path); code != 200 || !strings.Contains(body, want) {
			t.Fatalf("%s from this host: %d %.80q", path, code, body)
		}
		for _, hdr := range [][]string{
			{"X-Forwarded-For", "203.0.113.9"},
			{"Forwarded", "for=203.0.113.9"},
			{"Host", "attacker.example"},
			{"Host", "attacker.example:" + strings.Split(n.Addr, ":")[1]},
		} {
			if code, body := fetch(t, n.URL, path, hdr...); code != 403 || strings.Contains(body, want) {
				t.Fatalf("%s with %q: %d %.80q, want 403", path, hdr, code, body)
			}
		}
	}
	for _, host := range []string{"localhost", "status.localhost", "[::1]:8080"} {
		if code, _ := fetch(t, n.URL, "/metrics", "Host", host); code != 200 {
			t.Fatalf("/metrics with Host %q: %d", host, code)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := fetch(t, n.URL, path, "Host", "attacker.example", "X-Forwarded-For", "203.0.113.9"); code != 200 || body != "ok" {
			t.Fatalf("%s from anywhere: %d %q", path, code, body)
		}
	}
}

// TestOpsNeedAGrantWithATokenFile: with a token file the ops endpoints
// need a token granted ops on their resource, from this host too.
func TestOpsNeedAGrantWithATokenFile(t *testing.T) {
	pol, err := auth.Parse([]byte(`
[[token]]
name = "prometheus"
secret = "prometheus-secret-0123456789"
[[token.grant]]
actions = ["ops"]
paths = ["/ops/metrics"]

[[token]]
name = "admin"
secret = "admin-secret-0123456789"
[[token.grant]]
actions = ["*"]
paths = ["/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := servertest.Config()
	cfg.Policy = pol
	n := servertest.Start(t, cfg)
	for path, want := range opsPaths {
		if code, body := fetch(t, n.URL, path); code != 403 || !strings.Contains(body, "needs a token granted ops") {
			t.Fatalf("%s without a token: %d %.80q", path, code, body)
		}
		code, _ := fetch(t, n.URL, path, "Authorization", "Bearer prometheus-secret-0123456789")
		if (path == "/metrics") != (code == 200) {
			t.Fatalf("%s with the metrics token: %d", path, code)
		}
		if code, body := fetch(t, n.URL, path, "Authorization", "Bearer admin-secret-0123456789"); code != 200 || !strings.Contains(body, want) {
			t.Fatalf("%s with the admin token: %d %.80q", path, code, body)
		}
	}
	// A browser opens the page with the token in the query.
	if code, body := fetch(t, n.URL, "/?access_token=admin-secret-0123456789"); code != 200 || !strings.Contains(body, "<html") {
		t.Fatalf("page with ?access_token=: %d %.80q", code, body)
	}
}

// TestOpsListen: --ops-listen serves the ops endpoints on their own
// address, with /readyz's reason, and the public address keeps only
// /healthz and a /readyz that says ready or not, nothing more (the reason
// may name the store's address).
func TestOpsListen(t *testing.T) {
	redis := redistest.Start(t, redistest.Options{})
	cfg := servertest.Config()
	cfg.Store = redis.URL()
	cfg.OpsListen = "127.0.0.1:0"
	n := servertest.Start(t, cfg)
	ops := "http://" + n.OpsAddr()
	for path, want := range opsPaths {
		if code, body := fetch(t, n.URL, path); code != 404 || strings.Contains(body, want) {
			t.Fatalf("public %s: %d %.80q, want 404", path, code, body)
		}
		// Whoever reaches the ops address is served.
		if code, body := fetch(t, ops, path, "Host", "anything.example"); code != 200 || !strings.Contains(body, want) {
			t.Fatalf("ops %s: %d %.80q", path, code, body)
		}
	}
	if code, body := fetch(t, n.URL, "/healthz"); code != 200 || body != "ok" {
		t.Fatalf("public /healthz: %d %q", code, body)
	}
	redis.Stop(t)
	if code, body := fetch(t, n.URL, "/readyz"); code != 503 || body != "not ready" {
		t.Fatalf("public /readyz with Redis down: %d %q", code, body)
	}
	if code, body := fetch(t, ops, "/readyz"); code != 503 || !strings.HasPrefix(body, "not ready: redis store") {
		t.Fatalf("ops /readyz with Redis down: %d %q", code, body)
	}
}
