package server_test

import (
	"net/http"
	"testing"

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
	// The node's own endpoints: never limited, on any host.
	for range 5 {
		for _, host := range []string{"", "expose.test", "other.example"} {
			for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
				if r := get(t, c, n.URL, host, p); r.status != 200 {
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
