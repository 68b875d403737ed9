package tunnel_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
	"github.com/postern/postern/internal/tunnel"
)

// TestMain shares one private redis-server among the package's tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }

// env is one running node and a client for it.
type env struct {
	t    *testing.T
	node *servertest.Node
	c    *http.Client
}

type resp struct {
	status int
	body   string
	h      http.Header
}

// forEachStore runs fn as a subtest per engine (servertest.ForEachEngine),
// on a node whose tunnel options mutate changes.
func forEachStore(t *testing.T, mutate func(*tunnel.Options), fn func(e *env)) {
	forEachNode(t, func(c *node.Config) {
		if mutate != nil {
			mutate(&c.Tunnel)
		}
	}, fn)
}

// forEachNode runs fn as a subtest per engine, on a node configured by
// mutate.
func forEachNode(t *testing.T, mutate func(*node.Config), fn func(e *env)) {
	servertest.ForEachEngine(t, func(t *testing.T, eng servertest.Engine) {
		cfg := servertest.Config()
		cfg.Store = eng.Store
		mutate(&cfg)
		n := servertest.Start(t, cfg)
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		fn(&env{t: t, node: n, c: &http.Client{Transport: tr}})
	})
}

// do sends a request; hdr is name, value pairs.
func (e *env) do(method, path, body string, hdr ...string) resp {
	e.t.Helper()
	return e.doCtx(context.Background(), method, path, body, hdr...)
}

func (e *env) doCtx(ctx context.Context, method, path, body string, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.node.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp{status: res.StatusCode, body: string(b), h: res.Header}
}

func (e *env) want(r resp, status int, body string) {
	e.t.Helper()
	if r.status != status || r.body != body {
		e.t.Fatalf("got %d %q, want %d %q", r.status, r.body, status, body)
	}
}

var midRE = regexp.MustCompile(`^\d{1,16}-\d{1,16}$`)

// produce posts body and returns the message id.
func (e *env) produce(tunnelID, body string, hdr ...string) string {
	e.t.Helper()
	r := e.do("POST", "/t/"+tunnelID, body, hdr...)
	if r.status != http.StatusCreated || r.body != "" {
		e.t.Fatalf("produce: %d %q", r.status, r.body)
	}
	id := r.h.Get("X-Message-Id")
	if !midRE.MatchString(id) {
		e.t.Fatalf("X-Message-Id %q has not the <ms>-<seq> shape", id)
	}
	return id
}

func TestProduceConsume(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		r := e.do("POST", "/t/demo", `{"text": "Hello, World!"}`, "Content-Type", "application/json")
		e.want(r, 201, "")
		id := r.h.Get("X-Message-Id")
		if !midRE.MatchString(id) || r.h.Get("X-Queue-Size") != "1" {
			t.Fatalf("produce headers: id %q size %q", id, r.h.Get("X-Queue-Size"))
		}
		id2 := e.produce("demo", "second")
		if id2 <= id && len(id2) == len(id) {
			t.Fatalf("ids not increasing: %s then %s", id, id2)
		}

		r = e.do("GET", "/t/demo", "")
		e.want(r, 200, `{"text": "Hello, World!"}`)
		if r.h.Get("Content-Type") != "application/json" || r.h.Get("X-Message-Id") != id || r.h.Get("Content-Length") != "25" {
			t.Fatalf("consume headers: %v", r.h)
		}
		r = e.do("GET", "/t/demo/", "") // trailing slash
		e.want(r, 200, "second")
		if r.h.Get("Content-Type") != "text/plain" {
			t.Fatalf("default content type: %q", r.h.Get("Content-Type"))
		}
		e.want(e.do("GET", "/t/demo", ""), 204, "")
		// Tunnels are case-sensitive and independent.
		e.produce("Demo", "upper")
		e.want(e.do("GET", "/t/demo", ""), 204, "")
		e.want(e.do("GET", "/t/Demo", ""), 200, "upper")
	})
}

func TestBinaryAndEmptyBodies(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		bin := string([]byte{0, 1, 2, 0xff, '\r', '\n', 0})
		e.produce("b", bin, "Content-Type", "application/octet-stream")
		e.produce("b", "")
		r := e.do("GET", "/t/b", "")
		e.want(r, 200, bin)
		r = e.do("GET", "/t/b", "")
		e.want(r, 200, "")
		if r.h.Get("Content-Length") != "0" || r.h.Get("X-Message-Id") == "" {
			t.Fatalf("empty message headers: %v", r.h)
		}
	})
}

func TestConfiguredDefaultContentType(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.DefaultContentType = "application/json" }, func(e *env) {
		e.produce("x", "{}")
		if ct := e.do("GET", "/t/x", "").h.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
	})
}

func TestMalformedURLs(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		long := strings.Repeat("a", 1024)
		e.produce(long, "x")
		e.want(e.do("GET", "/t/"+long, ""), 200, "x")
		for _, p := range []string{
			"/t/" + long + "a", "/t/", "/t//", "/t/inv%20alid", "/t/invalid!", "/t/invalid/char", "/t/a.b",
			"/t/x/poll/", "/t/x/len/", "/t/x/all/", "/t/x/1-", "/t/x/abc", "/t/x/12345678901234567-1",
			"/t/x/1-1/reply/x", "/t/x/1-1/poll", "/t/x/1-1//", "/t/x/1-1/reply//", "/t/x/poll/1",
			"/t/%C3%A9", "/t/x/1-1/reply/poll/x",
		} {
			e.want(e.do("GET", p, ""), 400, "Malformed url")
		}
		e.want(e.do("POST", "/t/bad!id", "x"), 400, "Malformed url")
		// The body is the original's; X-Postern-Error says which rule broke.
		for p, why := range map[string]string{
			"/t/caf%C3%A9":     `a tunnel id is 1 to 1024 characters of A-Z a-z 0-9 - _ (not \"caf\u00e9\")`,
			"/t/my%20queue":    `a tunnel id is 1 to 1024 characters of A-Z a-z 0-9 - _ (not \"my queue\")`,
			"/t/a/b":           `\"b\" is no route of a tunnel: after /t/ID come poll, len, all or a message id such as 1764627000000-0`,
			"/t/x/poll/":       `/t/ID/poll takes nothing after it (no trailing slash)`,
			"/t/" + long + "a": `a tunnel id is 1 to 1024 characters of A-Z a-z 0-9 - _ (this one has 1025)`,
		} {
			r := e.do("GET", p, "")
			if r.status != 400 || r.body != "Malformed url" || r.h.Get("X-Postern-Error") != why {
				t.Errorf("GET %s: %d %q, X-Postern-Error %q; want %q", p, r.status, r.body, r.h.Get("X-Postern-Error"), why)
			}
		}
		// The routes that allow a trailing slash.
		id := e.produce("s", "m")
		e.want(e.do("GET", "/t/s/"+id+"/", ""), 201, "")
		e.want(e.do("GET", "/t/s/"+id+"/reply/", ""), 204, "")
		e.want(e.do("GET", "/t/s/"+id+"/reply/poll/?timeout=0", ""), 204, "")
		e.want(e.do("POST", "/t/s/", "n"), 201, "")
	})
}

func TestUnknownPathsAndHealth(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		e.want(e.do("GET", "/health", ""), 200, "OK")
		e.want(e.do("GET", "/health/deep", ""), 200, "OK")
		e.want(e.do("GET", "/healthcheck", ""), 200, "OK")
		e.want(e.do("GET", "/healthz", ""), 200, "ok")
		e.want(e.do("GET", "/readyz", ""), 200, "ok")
		r := e.do("GET", "/nothing-here", "")
		if r.status != 404 || strings.Contains(r.body, "\n") {
			t.Fatalf("unknown path: %d %q", r.status, r.body)
		}
	})
}

func TestMethodNotAllowed(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		cases := []struct{ method, path, allow string }{
			{"PUT", "/t/x", "GET, POST, OPTIONS"},
			{"DELETE", "/t/x", "GET, POST, OPTIONS"},
			{"HEAD", "/t/x", "GET, POST, OPTIONS"},
			{"POST", "/t/x/poll", "GET, OPTIONS"},
			{"POST", "/t/x/len", "GET, OPTIONS"},
			{"GET", "/t/x/all", "DELETE, OPTIONS"},
			{"POST", "/t/x/1-1", "GET, DELETE, OPTIONS"},
			{"DELETE", "/t/x/1-1/reply", "GET, POST, OPTIONS"},
			{"POST", "/t/x/1-1/reply/poll", "GET, OPTIONS"},
			{"PATCH", "/t/x/1-1/reply/poll", "GET, OPTIONS"},
		}
		for _, c := range cases {
			r := e.do(c.method, c.path, "")
			if r.status != 405 || r.h.Get("Allow") != c.allow {
				t.Fatalf("%s %s: %d Allow %q, want 405 Allow %q", c.method, c.path, r.status, r.h.Get("Allow"), c.allow)
			}
		}
		// Nothing was consumed by the HEAD.
		e.produce("h", "kept")
		e.do("HEAD", "/t/h", "")
		e.want(e.do("GET", "/t/h", ""), 200, "kept")
	})
}

func checkCORS(t *testing.T, r resp) {
	t.Helper()
	if r.h.Get("Access-Control-Allow-Origin") != "*" ||
		r.h.Get("Access-Control-Allow-Methods") != "GET, POST, DELETE, OPTIONS" ||
		r.h.Get("Access-Control-Expose-Headers") != "*, X-Message-Id, X-Queue-Size" {
		t.Fatalf("%d answer lacks CORS headers: %v", r.status, r.h)
	}
}

func TestCORS(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.AccessToken = "tok"; o.MaxLen = 1 }, func(e *env) {
		auth := []string{"Authorization", "Bearer tok"}
		r := e.do("OPTIONS", "/t/x", "")
		e.want(r, 204, "")
		checkCORS(t, r)
		if r.h.Get("Access-Control-Max-Age") != "3600" ||
			r.h.Get("Access-Control-Allow-Headers") != "Authorization, Content-Type, X-Hub-Signature-256" {
			t.Fatalf("preflight headers: %v", r.h)
		}
		r = e.do("OPTIONS", "/t/x/1-1/reply/poll", "", "Access-Control-Request-Headers", "authorization, x-custom")
		if r.status != 204 || r.h.Get("Access-Control-Allow-Headers") != "authorization, x-custom" {
			t.Fatalf("preflight echo: %d %v", r.status, r.h)
		}
		// Every answer carries the CORS headers, errors included.
		for _, r := range []resp{
			e.do("POST", "/t/x", "a", auth...),                         // 201
			e.do("POST", "/t/x", "b", auth...),                         // 507
			e.do("GET", "/t/x/len", "", auth...),                       // 204
			e.do("GET", "/t/x", "", auth...),                           // 200
			e.do("GET", "/t/x", ""),                                    // 403
			e.do("GET", "/t/x!", "", auth...),                          // 400
			e.do("PUT", "/t/x", "", auth...),                           // 405
			e.do("POST", "/t/x", strings.Repeat("z", 200000), auth...), // 413
		} {
			checkCORS(t, r)
		}
	})
}

func TestPendingMode(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		id1 := e.produce("p", "one")
		id2 := e.produce("p", "two")
		// Returned again and again until acknowledged; any value of pending counts.
		for _, q := range []string{"?pending", "?pending=0", "?pending=false&x=1"} {
			r := e.do("GET", "/t/p"+q, "")
			e.want(r, 200, "one")
			if r.h.Get("X-Message-Id") != id1 {
				t.Fatalf("pending id %q, want %q", r.h.Get("X-Message-Id"), id1)
			}
		}
		e.want(e.do("GET", "/t/p/"+id1, ""), 202, "")
		r := e.do("GET", "/t/p/len", "")
		e.want(r, 204, "")
		if r.h.Get("X-Queue-Size") != "2" {
			t.Fatalf("len with pending: %q", r.h.Get("X-Queue-Size"))
		}
		// A plain read skips the pending message.
		r = e.do("GET", "/t/p", "")
		e.want(r, 200, "two")
		if r.h.Get("X-Message-Id") != id2 {
			t.Fatal("plain read returned the pending message")
		}
		e.want(e.do("GET", "/t/p", ""), 204, "")
		e.want(e.do("GET", "/t/p/poll?pending&timeout=5", ""), 200, "one")
		e.want(e.do("DELETE", "/t/p/"+id1, ""), 204, "")
		e.want(e.do("GET", "/t/p/"+id1, ""), 204, "")
		e.want(e.do("GET", "/t/p?pending", ""), 204, "")
	})
}

func TestStatusAndAck(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		id := e.produce("s", "m")
		e.want(e.do("GET", "/t/s/"+id, ""), 201, "")
		e.do("GET", "/t/s?pending", "")
		e.want(e.do("GET", "/t/s/"+id, ""), 202, "")
		e.want(e.do("DELETE", "/t/s/"+id+"/", ""), 204, "")
		e.want(e.do("GET", "/t/s/"+id, ""), 204, "")
		e.want(e.do("GET", "/t/s/1-1", ""), 204, "")
		// Acknowledging deletes even a message nobody read; unknown ids are fine.
		unseen := e.produce("s", "never read")
		e.want(e.do("DELETE", "/t/s/"+unseen, ""), 204, "")
		e.want(e.do("DELETE", "/t/s/99-99", ""), 204, "")
		e.want(e.do("GET", "/t/s", ""), 204, "")
	})
}

func TestLenAndClear(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		r := e.do("GET", "/t/c/len", "")
		if r.status != 204 || r.h.Get("X-Queue-Size") != "0" {
			t.Fatalf("empty len: %d %v", r.status, r.h)
		}
		id := e.produce("c", "a")
		e.produce("c", "b")
		e.produce("c", "c")
		e.do("GET", "/t/c?pending", "")
		e.want(e.do("POST", "/t/c/"+id+"/reply", "kept"), 201, "")
		e.do("GET", "/t/c?pending", "")
		if n := e.do("GET", "/t/c/len", "").h.Get("X-Queue-Size"); n != "2" {
			t.Fatalf("len %s", n)
		}
		r = e.do("DELETE", "/t/c/all", "")
		e.want(r, 204, "")
		if r.h.Get("X-Queue-Size") != "0" {
			t.Fatalf("clear X-Queue-Size %q", r.h.Get("X-Queue-Size"))
		}
		if n := e.do("GET", "/t/c/len", "").h.Get("X-Queue-Size"); n != "0" {
			t.Fatalf("len after clear %s", n)
		}
		e.want(e.do("GET", "/t/c?pending", ""), 204, "")
		// Replies survive a clear.
		e.want(e.do("GET", "/t/c/"+id+"/reply", ""), 200, "kept")
	})
}

func TestReply(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		id := e.produce("r", "question")
		// Not pending: no reply is stored.
		e.want(e.do("POST", "/t/r/"+id+"/reply", "early"), 204, "")
		e.want(e.do("GET", "/t/r/"+id+"/reply", ""), 204, "")
		e.want(e.do("GET", "/t/r/"+id, ""), 201, "")
		e.do("GET", "/t/r?pending", "")
		e.want(e.do("POST", "/t/r/"+id+"/reply/", `{"a":1}`, "Content-Type", "application/json"), 201, "")
		// The reply acknowledged the message; a second reply is refused.
		e.want(e.do("GET", "/t/r/"+id, ""), 204, "")
		e.want(e.do("POST", "/t/r/"+id+"/reply", "second"), 204, "")
		r := e.do("GET", "/t/r/"+id+"/reply", "")
		e.want(r, 200, `{"a":1}`)
		if r.h.Get("Content-Type") != "application/json" {
			t.Fatalf("reply content type %q", r.h.Get("Content-Type"))
		}
		e.want(e.do("GET", "/t/r/"+id+"/reply", ""), 204, "") // read once
		// Default content type for replies.
		id = e.produce("r", "q2")
		e.do("GET", "/t/r?pending", "")
		e.do("POST", "/t/r/"+id+"/reply", "plain")
		if ct := e.do("GET", "/t/r/"+id+"/reply", "").h.Get("Content-Type"); ct != "text/plain" {
			t.Fatalf("reply default content type %q", ct)
		}
	})
}

func TestReplyPollWakes(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		id := e.produce("rp", "question")
		e.do("GET", "/t/rp?pending", "")
		got := make(chan resp, 1)
		go func() { got <- e.do("GET", "/t/rp/"+id+"/reply/poll?timeout=30", "") }()
		e.node.WaitForLongPolls(t, 1)
		e.want(e.do("POST", "/t/rp/"+id+"/reply", "answer"), 201, "")
		e.want(<-got, 200, "answer")
	})
}

func TestReplyPollNoWait(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		// The original blocked forever on these (defect 3) or failed (defect 10).
		for _, q := range []string{"0", "-5", "0.0001", "-0.5"} {
			e.want(e.do("GET", "/t/x/1-1/reply/poll?timeout="+q, ""), 204, "")
		}
	})
}

func TestConcurrentRepliesFirstWins(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		id := e.produce("cr", "q")
		e.do("GET", "/t/cr?pending", "")
		var wg sync.WaitGroup
		statuses := make(chan int, 10)
		for i := range 10 {
			wg.Go(func() { statuses <- e.do("POST", "/t/cr/"+id+"/reply", fmt.Sprint(i)).status })
		}
		wg.Wait()
		close(statuses)
		created := 0
		for s := range statuses {
			switch s {
			case 201:
				created++
			case 204:
			default:
				t.Fatalf("concurrent reply status %d", s)
			}
		}
		if created != 1 {
			t.Fatalf("%d replies stored, want 1", created)
		}
	})
}

func TestBackpressure(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.MaxLen = 5 }, func(e *env) {
		for i := 1; i <= 2; i++ {
			r := e.do("POST", "/t/bp?limit=2", "m")
			if r.status != 201 || r.h.Get("X-Queue-Size") != fmt.Sprint(i) {
				t.Fatalf("produce %d: %d size %q", i, r.status, r.h.Get("X-Queue-Size"))
			}
		}
		r := e.do("POST", "/t/bp?limit=2", "refused")
		e.want(r, 507, "Queue limit reached, consumers are not keeping up")
		if r.h.Get("X-Queue-Size") != "2" {
			t.Fatalf("507 X-Queue-Size %q", r.h.Get("X-Queue-Size"))
		}
		// Pending messages count; nothing was stored by the refusal.
		e.do("GET", "/t/bp?pending", "")
		e.want(e.do("POST", "/t/bp?limit=2", "refused"), 507, "Queue limit reached, consumers are not keeping up")
		if n := e.do("GET", "/t/bp/len", "").h.Get("X-Queue-Size"); n != "2" {
			t.Fatalf("len after refusals %s", n)
		}
		// Limit above the maximum length: 400. Equal: allowed despite the text.
		e.want(e.do("POST", "/t/bp?limit=6", "x"), 400, "Limit must be less than the tunnel max length")
		e.want(e.do("POST", "/t/bp?limit=5", "x"), 201, "")
		e.want(e.do("POST", "/t/bp?limit=-1", "x"), 400, "Limit must not be negative")
		// Fractions are floored (the original crashed); non-numbers use the configuration.
		e.want(e.do("POST", "/t/bp?limit=1.5", "x"), 507, "Queue limit reached, consumers are not keeping up")
		r = e.do("POST", "/t/bp?limit=abc", "x")
		if r.status != 201 || r.h.Get("X-Queue-Size") != "4" {
			t.Fatalf("limit=abc: %d size %q", r.status, r.h.Get("X-Queue-Size"))
		}
		// The configured limit is the maximum length.
		e.want(e.do("POST", "/t/bp", "x"), 201, "")
		e.want(e.do("POST", "/t/bp", "x"), 507, "Queue limit reached, consumers are not keeping up")
		// limit=0 turns backpressure off: accepted, the oldest trimmed and said so.
		r = e.do("POST", "/t/bp?limit=0", "newest")
		e.want(r, 201, "")
		if r.h.Get("X-Queue-Size") != "" || r.h.Get("X-Queue-Trimmed") != "1" {
			t.Fatalf("limit=0 headers: %v", r.h)
		}
		if n := e.do("GET", "/t/bp/len", "").h.Get("X-Queue-Size"); n != "5" {
			t.Fatalf("len at cap %s", n)
		}
	})
}

func TestBackpressureOffByDefault(t *testing.T) {
	// TUNNEL_BACKPRESSURE=0: produce without a limit works (the original
	// failed with 500) and keeps the cap exact.
	forEachStore(t, func(o *tunnel.Options) { o.Backpressure = false; o.MaxLen = 3 }, func(e *env) {
		for i := range 5 {
			r := e.do("POST", "/t/nb", fmt.Sprint(i))
			e.want(r, 201, "")
			if r.h.Get("X-Queue-Size") != "" {
				t.Fatalf("X-Queue-Size without backpressure: %v", r.h)
			}
		}
		for _, want := range []string{"2", "3", "4"} {
			e.want(e.do("GET", "/t/nb", ""), 200, want)
		}
		// An explicit limit turns it on for that request.
		e.produce("nb", "a")
		e.want(e.do("POST", "/t/nb?limit=1", "b"), 507, "Queue limit reached, consumers are not keeping up")
	})
}

func TestPollWakesOnProduce(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		got := make(chan resp, 1)
		go func() { got <- e.do("GET", "/t/lp/poll?timeout=30", "") }()
		e.node.WaitForLongPolls(t, 1)
		id := e.produce("lp", "wake up", "Content-Type", "text/x-wake")
		r := <-got
		e.want(r, 200, "wake up")
		if r.h.Get("X-Message-Id") != id || r.h.Get("Content-Type") != "text/x-wake" {
			t.Fatalf("poll headers: %v", r.h)
		}
		// Several pollers each get a different message.
		const n = 4
		results := make(chan resp, n)
		for range n {
			go func() { results <- e.do("GET", "/t/lp/poll?timeout=30", "") }()
		}
		e.node.WaitForLongPolls(t, n)
		for i := range n {
			e.produce("lp", fmt.Sprint(i))
		}
		seen := map[string]bool{}
		for range n {
			r := <-results
			if r.status != 200 || seen[r.body] {
				t.Fatalf("poller got %d %q (seen %v)", r.status, r.body, seen)
			}
			seen[r.body] = true
		}
	})
}

func TestPollTimeouts(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) {
		o.PollTimeout = time.Second
		o.MaxPollTimeout = time.Second
	}, func(e *env) {
		var wg sync.WaitGroup
		for _, q := range []string{"", "?timeout=100", "?timeout=1", "?timeout=abc"} {
			wg.Go(func() {
				start := time.Now()
				r := e.do("GET", "/t/empty/poll"+q, "")
				if r.status != 204 || r.body != "" {
					t.Errorf("poll%s: %d %q", q, r.status, r.body)
				}
				// The wait is the clamp or the default: one second, not a hundred.
				if d := time.Since(start); d < time.Second || d > 20*time.Second {
					t.Errorf("poll%s answered after %v, want about 1s", q, d)
				}
			})
		}
		wg.Wait()
		for _, q := range []string{"0", "-3", "0.0001", "-0.5"} {
			e.want(e.do("GET", "/t/empty/poll?timeout="+q, ""), 204, "")
		}
	})
}

func TestAbandonedPollLosesNothing(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", e.node.URL+"/t/ab/poll?timeout=30", nil)
			res, err := e.c.Do(req)
			if err == nil {
				res.Body.Close()
			}
			done <- err
		}()
		e.node.WaitForLongPolls(t, 1)
		cancel()
		if err := <-done; err == nil {
			t.Fatal("canceled poll succeeded")
		}
		// The server notices the disconnect and lets the waiter go.
		e.node.WaitForLongPolls(t, 0)
		e.produce("ab", "precious")
		e.want(e.do("GET", "/t/ab", ""), 200, "precious")
	})
}

func TestConcurrentConsumersGetEachMessageOnce(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		const producers, each, consumers = 4, 50, 6
		total := producers * each
		var wg sync.WaitGroup
		for p := range producers {
			wg.Go(func() {
				for i := range each {
					if r := e.do("POST", "/t/cc", fmt.Sprintf("%d-%d", p, i)); r.status != 201 {
						t.Errorf("produce: %d %q", r.status, r.body)
						return
					}
				}
			})
		}
		var mu sync.Mutex
		seen := map[string]int{}
		var cwg sync.WaitGroup
		stop := make(chan struct{})
		for range consumers {
			cwg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					r := e.do("GET", "/t/cc/poll?timeout=1", "")
					switch r.status {
					case 200:
						mu.Lock()
						seen[r.body]++
						n := len(seen)
						mu.Unlock()
						if n == total {
							select {
							case <-stop:
							default:
								close(stop)
							}
						}
					case 204:
					default:
						t.Errorf("consume: %d %q", r.status, r.body)
						return
					}
				}
			})
		}
		wg.Wait()
		cwg.Wait()
		if len(seen) != total {
			t.Fatalf("%d distinct messages consumed, want %d", len(seen), total)
		}
		for body, n := range seen {
			if n != 1 {
				t.Fatalf("%q delivered %d times", body, n)
			}
		}
	})
}

func TestRequestBodyLimit(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.AccessToken = "tok" }, func(e *env) {
		auth := []string{"Authorization", "Bearer tok"}
		max := int(tunnel.DefaultMaxBodyBytes)
		e.want(e.do("POST", "/t/big", strings.Repeat("a", max), auth...), 201, "")
		// Over the limit: 413, before routing and auth.
		e.want(e.do("POST", "/t/big", strings.Repeat("a", max+1), auth...), 413, "Request body too large")
		e.want(e.do("POST", "/t/bad!id", strings.Repeat("a", max+1)), 413, "Request body too large")
		// A chunked body (no Content-Length) is cut off at the limit too.
		req, _ := http.NewRequest("POST", e.node.URL+"/t/big", io.MultiReader(strings.NewReader(strings.Repeat("b", max)), strings.NewReader("b")))
		req.Header.Set("Authorization", "Bearer tok")
		req.ContentLength = -1
		res, err := e.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 413 || string(body) != "Request body too large" {
			t.Fatalf("chunked oversize: %d %q", res.StatusCode, body)
		}
		if n := e.do("GET", "/t/big/len", "", auth...).h.Get("X-Queue-Size"); n != "1" {
			t.Fatalf("oversize bodies were stored: len %s", n)
		}
	})
}

func TestSlowBodyTimesOut(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.BodyReadTimeout = 200 * time.Millisecond }, func(e *env) {
		conn, err := net.Dial("tcp", e.node.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Announce 100 bytes, send 5, then nothing: the server must not wait
		// for the rest for ever.
		fmt.Fprintf(conn, "POST /t/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 408 || string(body) != "request body not received in time" {
			t.Fatalf("slow body: %d %q", res.StatusCode, body)
		}
		e.want(e.do("GET", "/t/slow/len", ""), 204, "")
		if n := e.do("GET", "/t/slow/len", "").h.Get("X-Queue-Size"); n != "0" {
			t.Fatalf("partial body was stored: len %s", n)
		}
	})
}

func TestAuthToken(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.AccessToken = "thisisasecret" }, func(e *env) {
		e.want(e.do("GET", "/t/x", ""), 403, "Access denied")
		e.want(e.do("GET", "/t/x", "", "Authorization", "Bearer wrong"), 403, "Access denied")
		e.want(e.do("GET", "/t/x", "", "Authorization", "Bearer thisisasecre"), 403, "Access denied")
		e.want(e.do("GET", "/t/x", "", "Authorization", "Bearer thisisasecretX"), 403, "Access denied")
		// Anchored scheme (the original matched "XBearer tok").
		e.want(e.do("GET", "/t/x", "", "Authorization", "XBearer thisisasecret"), 403, "Access denied")
		e.want(e.do("GET", "/t/x", "", "Authorization", "Basic thisisasecret"), 403, "Access denied")
		e.want(e.do("GET", "/t/x", "", "Authorization", "thisisasecret"), 403, "Access denied")
		for _, h := range []string{"Bearer thisisasecret", "bearer thisisasecret", "BEARER   thisisasecret "} {
			e.want(e.do("GET", "/t/x", "", "Authorization", h), 204, "")
		}
		// Auth is per request: a request right after an authorized one on the
		// same connection does not inherit its token (the original's defect 1).
		e.want(e.do("POST", "/t/x", "m", "Authorization", "Bearer thisisasecret"), 201, "")
		e.want(e.do("GET", "/t/x", ""), 403, "Access denied")
		e.want(e.do("GET", "/t/x/len", ""), 403, "Access denied")
		// Health needs no auth.
		e.want(e.do("GET", "/health", ""), 200, "OK")
	})
}

func sign(secret, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func TestAuthSignature(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.SignatureSecret = "octopusatecat" }, func(e *env) {
		body := `{"action":"opened"}`
		e.want(e.do("POST", "/t/hook", body, "X-Hub-Signature-256", sign("octopusatecat", body)), 201, "")
		e.want(e.do("POST", "/t/hook", body, "X-Hub-Signature-256", strings.ToUpper(sign("octopusatecat", body))), 201, "")
		e.want(e.do("POST", "/t/hook", body, "X-Hub-Signature-256", sign("wrong", body)), 403, "Access denied")
		e.want(e.do("POST", "/t/hook", body+" ", "X-Hub-Signature-256", sign("octopusatecat", body)), 403, "Access denied")
		// Other algorithms are refused, not crashed on (the original's defect 9).
		e.want(e.do("POST", "/t/hook", body, "X-Hub-Signature-256", "sha1=0123456789abcdef0123456789abcdef01234567"), 403, "Access denied")
		e.want(e.do("POST", "/t/hook", body, "X-Hub-Signature-256", "sha256=zz"), 403, "Access denied")
		e.want(e.do("POST", "/t/hook", body), 403, "Access denied")
		// An empty body never passes by signature.
		e.want(e.do("POST", "/t/hook", "", "X-Hub-Signature-256", sign("octopusatecat", "")), 403, "Access denied")
		// The signature does not leak into the next request (defect 8).
		e.want(e.do("GET", "/t/hook", ""), 403, "Access denied")
		// A valid signature authenticates any tunnel route, e.g. a reply.
		e.want(e.do("POST", "/t/hook", "q", "X-Hub-Signature-256", sign("octopusatecat", "q")), 201, "")
		r := e.do("DELETE", "/t/hook/all", "x", "X-Hub-Signature-256", sign("octopusatecat", "x"))
		e.want(r, 204, "")
		if r.h.Get("X-Queue-Size") != "0" {
			t.Fatalf("signed clear: X-Queue-Size %q", r.h.Get("X-Queue-Size"))
		}
	})
}

func TestPublicIDs(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.PublicIDs = []string{"demo", "something-else"} }, func(e *env) {
		e.want(e.do("POST", "/t/demo", "open"), 201, "")
		e.want(e.do("GET", "/t/demo", ""), 200, "open")
		e.want(e.do("GET", "/t/something-else/len", ""), 204, "")
		// Public ids alone make every other tunnel unavailable.
		e.want(e.do("GET", "/t/private", ""), 403, "Access denied")
		e.want(e.do("GET", "/t/demo2", ""), 403, "Access denied")
	})
	forEachStore(t, func(o *tunnel.Options) { o.PublicIDs = []string{"demo"}; o.AccessToken = "tok" }, func(e *env) {
		e.want(e.do("GET", "/t/demo", ""), 204, "")
		e.want(e.do("GET", "/t/other", ""), 403, "Access denied")
		e.want(e.do("GET", "/t/other", "", "Authorization", "Bearer tok"), 204, "")
	})
}

func TestOpenWhenNoAuthConfigured(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		e.want(e.do("GET", "/t/anything", "", "Authorization", "Bearer whatever"), 204, "")
		e.want(e.do("GET", "/t/anything", ""), 204, "")
	})
}

func TestScopedTokens(t *testing.T) {
	policy, err := auth.Parse([]byte(`
[[token]]
name = "producer"
secret = "producer-secret-0001"
[[token.grant]]
actions = ["write"]
paths = ["/t/jobs-*"]

[[token]]
name = "worker"
secret = "worker-secret-000001"
[[token.grant]]
actions = ["read", "write"]
paths = ["/t/jobs-a"]
`))
	if err != nil {
		t.Fatal(err)
	}
	forEachNode(t, func(c *node.Config) { c.Policy = policy; c.Tunnel.PublicIDs = []string{"demo"} }, func(e *env) {
		prod := []string{"Authorization", "Bearer producer-secret-0001"}
		work := []string{"Authorization", "Bearer worker-secret-000001"}
		e.want(e.do("POST", "/t/jobs-a", "1", prod...), 201, "")
		e.want(e.do("POST", "/t/jobs-b", "2", prod...), 201, "")
		// Write only: the producer cannot consume.
		e.want(e.do("GET", "/t/jobs-a", "", prod...), 403, "Access denied")
		e.want(e.do("POST", "/t/other", "x", prod...), 403, "Access denied")
		// The worker reads its own tunnel, acknowledges there, nowhere else.
		r := e.do("GET", "/t/jobs-a?pending", "", work...)
		e.want(r, 200, "1")
		e.want(e.do("DELETE", "/t/jobs-a/"+r.h.Get("X-Message-Id"), "", work...), 204, "")
		e.want(e.do("GET", "/t/jobs-b", "", work...), 403, "Access denied")
		e.want(e.do("GET", "/t/jobs-a", "", "Authorization", "Bearer unknown-secret-0001"), 403, "Access denied")
		// Public ids stay open alongside the policy.
		e.want(e.do("GET", "/t/demo", ""), 204, "")
	})
}

func TestShutdownAnswersLongPolls(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		got := make(chan resp, 2)
		go func() { got <- e.do("GET", "/t/sd/poll?timeout=60", "") }()
		go func() { got <- e.do("GET", "/t/sd/1-1/reply/poll?timeout=60", "") }()
		e.node.WaitForLongPolls(t, 2)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.node.Shutdown(ctx); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		for range 2 {
			r := <-got
			e.want(r, 204, "")
			// Marked, so postern's clients do not take it for an empty queue.
			if r.h.Get("X-Postern-Draining") != "true" {
				t.Errorf("the long-poll ended by the shutdown is not marked: %v", r.h)
			}
		}
	})
}

func TestMetrics(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		e.produce("m", "a")
		e.produce("m", "b")
		e.do("GET", "/t/m", "")
		e.do("GET", "/t/m!", "")
		e.do("GET", "/t/m", "")
		e.do("GET", "/t/m", "")
		metrics := e.do("GET", "/metrics", "").body
		for _, want := range []string{
			`postern_http_requests_total{code="201",route="tunnel.produce"} 2`,
			`postern_http_requests_total{code="200",route="tunnel.consume"} 2`,
			`postern_http_requests_total{code="204",route="tunnel.consume"} 1`,
			`postern_http_requests_total{code="400",route="tunnel.malformed"} 1`,
			`postern_queue_appended_total{kind="t"} 2`,
			`postern_queue_delivered_total{kind="t"} 2`,
			`postern_build_info{`,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
		// Emptied tunnels are forgotten (the original kept every tunnel forever).
		if st, ok := metricValue(metrics, "postern_queue_queues"); ok && st != "0" {
			t.Errorf("postern_queue_queues = %s after the tunnel was emptied", st)
		}
	})
}

func metricValue(text, name string) (string, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v, true
		}
	}
	return "", false
}

func TestLargeQueueKeepsOrder(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		var want bytes.Buffer
		for i := range 300 {
			e.produce("order", fmt.Sprint(i))
			fmt.Fprint(&want, i, ",")
		}
		var got bytes.Buffer
		for range 300 {
			fmt.Fprint(&got, e.do("GET", "/t/order", "").body, ",")
		}
		if got.String() != want.String() {
			t.Fatal("messages came out of order")
		}
	})
}

// TestReadsCreateNoStorage is defect 14 of the original: any read created
// storage for the tunnel that never went away, so an anonymous client
// reading random tunnel ids grew the server without bound. Reads, status,
// acknowledgements and clears of tunnels nobody produced to leave nothing
// behind; trims are counted.
func TestReadsCreateNoStorage(t *testing.T) {
	for _, spec := range []string{"memory", "file:" + t.TempDir()} {
		t.Run(strings.SplitN(spec, ":", 2)[0], func(t *testing.T) {
			cfg := servertest.Config()
			cfg.Store = spec
			cfg.Tunnel.MaxLen = 2
			n := servertest.Start(t, cfg)
			e := &env{t: t, node: n, c: &http.Client{}}
			defer e.c.CloseIdleConnections()
			for i := range 50 {
				id := fmt.Sprintf("never-%d", i)
				e.want(e.do("GET", "/t/"+id, ""), 204, "")
				e.want(e.do("GET", "/t/"+id+"?pending", ""), 204, "")
				e.want(e.do("GET", "/t/"+id+"/poll?timeout=0", ""), 204, "")
				e.want(e.do("GET", "/t/"+id+"/len", ""), 204, "")
				e.want(e.do("GET", "/t/"+id+"/1-1", ""), 204, "")
				e.want(e.do("DELETE", "/t/"+id+"/1-1", ""), 204, "")
				e.want(e.do("GET", "/t/"+id+"/1-1/reply/poll?timeout=0", ""), 204, "")
				e.want(e.do("POST", "/t/"+id+"/1-1/reply", "r"), 204, "")
				e.want(e.do("DELETE", "/t/"+id+"/all", ""), 204, "")
			}
			// A waiter that leaves takes its tunnel with it.
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				req, _ := http.NewRequestWithContext(ctx, "GET", n.URL+"/t/never-waited/poll?timeout=30", nil)
				if res, err := e.c.Do(req); err == nil {
					res.Body.Close()
				}
			}()
			n.WaitForLongPolls(t, 1)
			cancel()
			<-done
			n.WaitForLongPolls(t, 0)
			metrics := e.do("GET", "/metrics", "").body
			if v, ok := metricValue(metrics, "postern_queue_queues"); !ok || v != "0" {
				t.Fatalf("postern_queue_queues = %q (present %v) after reads of tunnels nobody produced to", v, ok)
			}
			// Backpressure off for a request: the oldest is trimmed, said so
			// in the answer and counted.
			e.produce("full", "a")
			e.produce("full", "b")
			if r := e.do("POST", "/t/full?limit=0", "c"); r.status != 201 || r.h.Get("X-Queue-Trimmed") != "1" {
				t.Fatalf("trim: %d %v", r.status, r.h)
			}
			if v, ok := metricValue(e.do("GET", "/metrics", "").body, `postern_queue_trimmed_total{kind="t"}`); v != "1" {
				t.Fatalf("postern_queue_trimmed_total = %q (present %v)", v, ok)
			}
		})
	}
}

// TestMessagesAreSandboxed: a message is served with the Content-Type its
// producer gave it (the contract), so anyone who may produce to a tunnel
// (a public id, an anonymous grant) could store an HTML page with script
// and have a browser run it on postern's origin. Messages and replies are
// served sandboxed (no script, an opaque origin) and unsniffed.
func TestMessagesAreSandboxed(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.PublicIDs = []string{"demo"}; o.AccessToken = "tok" }, func(e *env) {
		page := `<script>fetch("/_postern/status")</script>`
		id := e.produce("demo", page, "Content-Type", "text/html")
		check := func(r resp, what string) {
			t.Helper()
			if r.status != 200 || r.body != page || r.h.Get("Content-Type") != "text/html" ||
				r.h.Get("Content-Security-Policy") != "sandbox; frame-ancestors 'none'" || r.h.Get("X-Content-Type-Options") != "nosniff" {
				t.Fatalf("%s: %d %q %v", what, r.status, r.body, r.h)
			}
		}
		check(e.do("GET", "/t/demo?pending", ""), "pending read")
		e.want(e.do("POST", "/t/demo/"+id+"/reply", page, "Content-Type", "text/html"), 201, "")
		check(e.do("GET", "/t/demo/"+id+"/reply", ""), "reply")
		e.produce("demo", page, "Content-Type", "text/html")
		check(e.do("GET", "/t/demo/poll?timeout=1", ""), "poll")
	})
}

// TestIdempotentProduce: a produce sent again with its Idempotency-Key is
// answered as the first was (same id, marked replayed) and stores nothing,
// whether the message is queued, being delivered or delivered; keys are
// per tunnel and bounded in size.
func TestIdempotentProduce(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		key := []string{"Idempotency-Key", "order-17"}
		r := e.do("POST", "/t/idem", "first", key...)
		id := r.h.Get("X-Message-Id")
		if r.status != 201 || r.h.Get("Idempotent-Replayed") != "" {
			e.t.Fatalf("first produce: %d replayed %q", r.status, r.h.Get("Idempotent-Replayed"))
		}
		again := func(body string) {
			e.t.Helper()
			r := e.do("POST", "/t/idem", body, key...)
			if r.status != 201 || r.h.Get("X-Message-Id") != id || r.h.Get("Idempotent-Replayed") != "true" {
				e.t.Fatalf("repeat: %d id %q replayed %q, want 201 %s true", r.status, r.h.Get("X-Message-Id"), r.h.Get("Idempotent-Replayed"), id)
			}
		}
		again("second") // queued: the first content stays
		e.want(e.do("GET", "/t/idem/len", ""), 204, "")
		if n := e.do("GET", "/t/idem/len", "").h.Get("X-Queue-Size"); n != "1" {
			e.t.Fatalf("len %s after a repeat, want 1", n)
		}
		e.want(e.do("GET", "/t/idem", ""), 200, "first")
		again("third") // delivered: still remembered
		e.want(e.do("GET", "/t/idem", ""), 204, "")
		// Another tunnel, or no key, is another message.
		if r := e.do("POST", "/t/other", "x", key...); r.status != 201 || r.h.Get("Idempotent-Replayed") != "" {
			e.t.Fatalf("same key on another tunnel: %d %v", r.status, r.h)
		}
		e.produce("idem", "no key")
		e.produce("idem", "no key")
		if n := e.do("GET", "/t/idem/len", "").h.Get("X-Queue-Size"); n != "2" {
			e.t.Fatalf("len %s, want 2", n)
		}
		long := strings.Repeat("k", tunnel.MaxIdempotencyKeyBytes+1)
		e.want(e.do("POST", "/t/idem", "x", "Idempotency-Key", long), 400, "Idempotency-Key is longer than 256 bytes")
	})
}

// TestIdempotencyKeysBounded: beyond --tunnel-idempotency-keys the oldest
// keys of delivered messages are forgotten (the window is the contract
// suite's DedupWindow).
func TestIdempotencyKeysBounded(t *testing.T) {
	forEachStore(t, func(o *tunnel.Options) { o.IdempotencyKeys = 2 }, func(e *env) {
		for _, k := range []string{"a", "b", "c"} {
			e.produce("w", k, "Idempotency-Key", k)
			e.want(e.do("GET", "/t/w", ""), 200, k)
		}
		if r := e.do("POST", "/t/w", "c", "Idempotency-Key", "c"); r.h.Get("Idempotent-Replayed") != "true" {
			e.t.Fatal("the newest key was forgotten")
		}
		if r := e.do("POST", "/t/w", "a", "Idempotency-Key", "a"); r.h.Get("Idempotent-Replayed") != "" {
			e.t.Fatal("the oldest key beyond the bound is still remembered")
		}
	})
}
