package ratelimit_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/ratelimit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func serve(t *testing.T, opts ratelimit.Options, p *auth.Policy, trusted ...netip.Prefix) (*httptest.Server, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	opts.Now = c.now
	l, err := ratelimit.New(opts, capability.Deps{Policy: p, TrustedProxies: trusted})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(l.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(204)
	})))
	t.Cleanup(srv.Close)
	return srv, c
}

func status(t *testing.T, url string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode, res.Header.Get("Retry-After")
}

func TestPerAddrBurstThenRefill(t *testing.T) {
	srv, c := serve(t, ratelimit.Options{PerAddr: 2, PerAddrBurst: 3, Exempt: []string{"/healthz"}}, nil)
	for i := range 3 {
		if s, _ := status(t, srv.URL+"/x"); s != 204 {
			t.Fatalf("request %d in burst: %d", i, s)
		}
	}
	s, retry := status(t, srv.URL+"/x")
	if s != 429 || retry != "1" {
		t.Fatalf("over the burst: %d Retry-After %q, want 429 and 1", s, retry)
	}
	if s, _ := status(t, srv.URL+"/healthz"); s != 204 {
		t.Fatalf("exempt path limited: %d", s)
	}
	c.add(500 * time.Millisecond) // one token back at 2/s
	if s, _ := status(t, srv.URL+"/x"); s != 204 {
		t.Fatalf("after refill: %d", s)
	}
	if s, _ := status(t, srv.URL+"/x"); s != 429 {
		t.Fatalf("refill gave more than one token: %d", s)
	}
}

func TestTokensHaveTheirOwnBuckets(t *testing.T) {
	p, err := auth.Parse([]byte(`
[[token]]
name = "a"
secret = "aaaaaaaaaaaaaaaa"
[[token]]
name = "b"
secret = "bbbbbbbbbbbbbbbb"
`))
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := serve(t, ratelimit.Options{PerAddr: 1, PerAddrBurst: 1, PerToken: 1, PerTokenBurst: 2}, p)
	for i := range 2 {
		if s, _ := status(t, srv.URL, "Authorization", "Bearer aaaaaaaaaaaaaaaa"); s != 204 {
			t.Fatalf("token a request %d: %d", i, s)
		}
	}
	if s, _ := status(t, srv.URL, "Authorization", "Bearer aaaaaaaaaaaaaaaa"); s != 429 {
		t.Fatalf("token a over its burst: %d", s)
	}
	// Same address, another token: its own bucket.
	if s, _ := status(t, srv.URL, "Authorization", "Bearer bbbbbbbbbbbbbbbb"); s != 204 {
		t.Fatalf("token b: %d", s)
	}
	// Tokenless requests (and unknown tokens) are limited by address, which
	// the token requests did not spend.
	if s, _ := status(t, srv.URL, "Authorization", "Bearer unknown-unknown-1"); s != 204 {
		t.Fatalf("unknown token, first by address: %d", s)
	}
	if s, _ := status(t, srv.URL); s != 429 {
		t.Fatalf("address over its burst: %d", s)
	}
}

func TestForwardedForOnlyFromTrustedProxies(t *testing.T) {
	loop := netip.MustParsePrefix("127.0.0.0/8")
	srv, _ := serve(t, ratelimit.Options{PerAddr: 1, PerAddrBurst: 1}, nil, loop)
	// Behind the trusted proxy (the test's loopback peer), each forwarded
	// client has its own bucket.
	for i := range 5 {
		xff := "198.51.100." + strconv.Itoa(i)
		if s, _ := status(t, srv.URL, "X-Forwarded-For", xff); s != 204 {
			t.Fatalf("client %s: %d", xff, s)
		}
	}
	if s, _ := status(t, srv.URL, "X-Forwarded-For", "203.0.113.9, 198.51.100.0"); s != 429 {
		t.Fatalf("rightmost untrusted hop not used: %d", s)
	}

	srv2, _ := serve(t, ratelimit.Options{PerAddr: 1, PerAddrBurst: 1}, nil)
	status(t, srv2.URL, "X-Forwarded-For", "198.51.100.1")
	// Untrusted peer: the header is ignored, so a spoofed one does not help.
	if s, _ := status(t, srv2.URL, "X-Forwarded-For", "198.51.100.2"); s != 429 {
		t.Fatalf("spoofed X-Forwarded-For honoured: %d", s)
	}
}

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	cases := []struct{ remote, xff, want string }{
		{"192.0.2.1:1234", "", "192.0.2.1"},
		{"192.0.2.1:1234", "203.0.113.5", "192.0.2.1"},
		{"10.0.0.1:1", "203.0.113.5", "203.0.113.5"},
		{"10.0.0.1:1", "203.0.113.5, 10.0.0.2", "203.0.113.5"},
		{"10.0.0.1:1", "garbage, 10.0.0.2", "10.0.0.2"},
		{"10.0.0.1:1", "", "10.0.0.1"},
		{"[::ffff:192.0.2.7]:1", "", "192.0.2.7"},
		{"not-an-addr", "", "invalid IP"},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := ratelimit.ClientAddr(r, trusted).String(); got != c.want {
			t.Errorf("ClientAddr(%s, %q) = %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
}

func TestMemoryIsBounded(t *testing.T) {
	// With room for one client per shard, thousands of addresses neither
	// grow memory nor lock anybody out: an evicted client comes back with a
	// fresh burst.
	l, err := ratelimit.New(ratelimit.Options{PerAddr: 1, PerAddrBurst: 1, MaxClients: 16}, capability.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	h := l.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	for i := range 5000 {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = "198.51." + strconv.Itoa(i/256) + "." + strconv.Itoa(i%256) + ":1"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 204 {
			t.Fatalf("client %d refused on its first request: %d", i, w.Code)
		}
		if n := l.Tracked(); n > 16 {
			t.Fatalf("after %d clients the limiter tracks %d buckets, want at most 16", i+1, n)
		}
	}
}

// TestAddrKey: IPv6 clients are counted by their /64, IPv4 ones by their
// address, mapped addresses as IPv4.
func TestAddrKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":               "192.0.2.7",
		"::ffff:192.0.2.7":        "192.0.2.7",
		"2001:db8:1:2:aaaa::1":    "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::ffff": "2001:db8:1:2::/64",
		"2001:db8:1:3::1":         "2001:db8:1:3::/64",
	} {
		if got := ratelimit.AddrKey(netip.MustParseAddr(in)); got != want {
			t.Errorf("AddrKey(%s) = %s, want %s", in, got, want)
		}
	}
	if got := ratelimit.AddrKey(netip.Addr{}); got != "unknown" {
		t.Errorf("AddrKey(invalid) = %s", got)
	}
}

// TestFromThisHost: a client is on this host when its address is
// loopback, and no proxy that is not trusted passed the request on.
func TestFromThisHost(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	cases := []struct {
		remote string
		hdr    []string
		want   bool
	}{
		{"127.0.0.1:1", nil, true},
		{"[::1]:1", nil, true},
		{"192.0.2.1:1", nil, false},
		{"127.0.0.1:1", []string{"X-Forwarded-For", "203.0.113.5"}, false}, // a proxy on this host not declared
		{"127.0.0.1:1", []string{"Forwarded", "for=203.0.113.5"}, false},
		{"127.0.0.1:1", []string{"X-Real-Ip", "203.0.113.5"}, false},
		{"127.0.0.2:1", []string{"X-Forwarded-For", "203.0.113.5"}, false}, // a trusted proxy's remote client
		{"127.0.0.2:1", []string{"X-Forwarded-For", "127.0.0.1"}, true},    // a trusted proxy's local client
		{"127.0.0.2:1", nil, true},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		for i := 0; i+1 < len(c.hdr); i += 2 {
			r.Header.Set(c.hdr[i], c.hdr[i+1])
		}
		if got := ratelimit.FromThisHost(r, trusted); got != c.want {
			t.Errorf("FromThisHost(%s, %q) = %v, want %v", c.remote, c.hdr, got, c.want)
		}
	}
}
