package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }

type result struct {
	status int
	body   string
	h      http.Header
}

func do(c *http.Client, method, url, body string) (result, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return result{}, err
	}
	res, err := c.Do(req)
	if err != nil {
		return result{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return result{res.StatusCode, string(b), res.Header}, err
}

// counter signals when a count reaches a goal.
type counter struct {
	mu    sync.Mutex
	n     int
	goal  int
	reach chan struct{}
}

func (c *counter) add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.reach != nil && c.n >= c.goal {
		close(c.reach)
		c.reach = nil
	}
}

// await returns a channel closed once the count has grown by more.
func (c *counter) await(more int) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{})
	c.goal, c.reach = c.n+more, ch
	return ch
}

func within(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// TestRedisOutageUnderLoad stops Redis while producers, consumers and
// long-polls run: every failure is a clear 503 with a one-line reason (never
// a 500, a hang or a dropped connection), goroutines do not pile up, and
// service resumes by itself once Redis is back.
func TestRedisOutageUnderLoad(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	cfg := servertest.Config()
	cfg.Store = srv.URL()
	node := servertest.Start(t, cfg)
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 15 * time.Second}

	// Warm up, then count goroutines at rest.
	if r, err := do(c, "POST", node.URL+"/t/warm", "x"); err != nil || r.status != 201 {
		t.Fatalf("warm-up produce: %v %v", r, err)
	}
	tr.CloseIdleConnections()
	base := runtime.NumGoroutine()

	var ok, unavailable counter
	var bad, reason atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	worker := func(method, path, body string, good ...int) {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := do(c, method, node.URL+path, body)
				switch {
				case err != nil:
					bad.CompareAndSwap(nil, fmt.Sprintf("%s %s: %v", method, path, err))
					return
				case r.status == 503:
					if !strings.Contains(r.body, "storage unavailable") || strings.ContainsAny(r.body, "\r\n") {
						bad.CompareAndSwap(nil, fmt.Sprintf("503 without a one-line reason: %q", r.body))
						return
					}
					reason.CompareAndSwap(nil, r.body)
					unavailable.add()
				default:
					found := false
					for _, g := range good {
						found = found || r.status == g
					}
					if !found {
						bad.CompareAndSwap(nil, fmt.Sprintf("%s %s: %d %q", method, path, r.status, r.body))
						return
					}
					ok.add()
				}
			}
		})
	}
	for range 3 {
		worker("POST", "/t/load", "payload", 201, 507)
		worker("GET", "/t/load", "", 200, 204)
	}
	worker("GET", "/t/idle/poll?timeout=1", "", 204)
	check := func() {
		t.Helper()
		if v := bad.Load(); v != nil {
			t.Fatal(v)
		}
	}

	within(t, ok.await(50), 10*time.Second, "traffic before the outage")
	srv.Kill(t)
	within(t, unavailable.await(50), 10*time.Second, "503s while Redis is down")
	check()
	if r, _ := do(c, "GET", node.URL+"/readyz", ""); r.status != 503 {
		t.Fatalf("/readyz with Redis down: %d %q", r.status, r.body)
	}
	srv.Restart(t)
	within(t, ok.await(200), 15*time.Second, "service to resume after Redis restarted")
	close(stop)
	wg.Wait()
	check()
	if r, _ := do(c, "GET", node.URL+"/readyz", ""); r.status != 200 {
		t.Fatalf("/readyz after Redis is back: %d %q", r.status, r.body)
	}
	tr.CloseIdleConnections()
	// Goroutines settle back near where they were (connections close
	// asynchronously); a pile-up would leave hundreds.
	deadline := time.Now().Add(30 * time.Second)
	for n := runtime.NumGoroutine(); n > base+10; n = runtime.NumGoroutine() {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the outage, %d before", n, base)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("outage: %d ok, %d answered 503, such as %q", ok.n, unavailable.n, reason.Load())
}

// TestAcknowledgedWritesSurviveRedisCrash is the persistence setting that
// docs/operations.md documents: with appendonly yes and appendfsync always,
// every message acknowledged with 201 survives a crash (kill -9) of
// redis-server, in order, pending state included.
func TestAcknowledgedWritesSurviveRedisCrash(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AppendOnly: true, AppendFsync: "always"})
	cfg := servertest.Config()
	cfg.Store = srv.URL()
	// A take whose answer was lost comes back after its lease: short here,
	// so that a consumer retrying after a 503 gets it soon.
	cfg.Queue.Lease = 200 * time.Millisecond
	node := servertest.Start(t, cfg)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	const n = 200
	for i := range n {
		if r, err := do(c, "POST", fmt.Sprint(node.URL, "/t/durable"), fmt.Sprint("m", i)); err != nil || r.status != 201 {
			t.Fatalf("produce %d: %v %v", i, r, err)
		}
	}
	if r, _ := do(c, "GET", node.URL+"/t/durable?pending", ""); r.status != 200 || r.body != "m0" {
		t.Fatalf("pending take: %v", r)
	}
	srv.Kill(t)
	srv.Restart(t)
	// The node reconnects by itself. A request that meets a connection the
	// crash broke is answered 503 (the outcome of a take is then unknown),
	// and a client retries, as the client package does, on a 503 and on a
	// lost connection alike: every acknowledged message still arrives, in
	// order as long as nothing failed.
	failures := 0
	get := func(path string) result {
		t.Helper()
		for {
			r, err := do(c, "GET", node.URL+path, "")
			if err == nil && r.status != http.StatusServiceUnavailable {
				return r
			}
			if failures++; failures > 20 {
				t.Fatalf("GET %s: still %v %v after %d failed tries", path, r, err, failures)
			}
		}
	}
	if r := get("/t/durable?pending"); r.status != 200 || r.body != "m0" {
		t.Fatalf("pending message after the crash: %v", r)
	}
	seen := map[string]bool{}
	clean := failures // no failure since: the order must be exact
	for next, empty := 1, 0; len(seen) < n-1; {
		r := get("/t/durable/poll?timeout=1")
		if r.status == http.StatusNoContent && failures > clean && empty < 10 {
			empty++ // a message whose answer was lost is still leased
			continue
		}
		if r.status != 200 {
			t.Fatalf("after %d of %d messages: %v", len(seen), n-1, r)
		}
		if failures == clean && r.body != fmt.Sprint("m", next) {
			t.Fatalf("message %d after the crash: %q, with no failure before it", next, r.body)
		}
		seen[r.body] = true
		next++
	}
	for i := 1; i < n; i++ {
		if !seen[fmt.Sprint("m", i)] {
			t.Fatalf("m%d was acknowledged and never delivered", i)
		}
	}
	if r := get("/t/durable/len"); r.h.Get("X-Queue-Size") != "1" {
		t.Fatalf("len after draining (the pending one stays): %v", r)
	}
}

func TestOpsNodesOnMemory(t *testing.T) {
	node := servertest.Start(t, servertest.Config())
	r, err := do(http.DefaultClient, "GET", node.URL+"/ops/nodes", "")
	if err != nil || r.status != 200 || !strings.Contains(r.body, `"addr":"`+node.URL+`"`) {
		t.Fatalf("/ops/nodes = %v %v", r, err)
	}
	if r, _ := do(http.DefaultClient, "POST", node.URL+"/ops/nodes", "x"); r.status != 405 {
		t.Fatalf("POST /ops/nodes = %d", r.status)
	}
}

func TestNodeSettingsValidated(t *testing.T) {
	for _, c := range []struct {
		advertise string
		ttl       time.Duration
		ok        bool
	}{
		{"10.0.0.5:8080", 0, true},
		{"https://node-a.internal:8443", 0, true},
		{"10.0.0.5", 0, false},          // no port
		{"ftp://10.0.0.5:21", 0, false}, // not http
		{"http://10.0.0.5:8080/x", 0, false},
		{"", 100 * time.Millisecond, false},
	} {
		cfg := servertest.Config()
		cfg.AdvertiseAddr, cfg.NodeTTL = c.advertise, c.ttl
		srv, err := node.New(cfg)
		if (err == nil) != c.ok {
			t.Errorf("advertise %q ttl %v: err %v, want ok=%v", c.advertise, c.ttl, err, c.ok)
		}
		if srv != nil {
			srv.Shutdown(context.Background())
		}
	}
}

// TestConcurrentConsumersOnTwoNodes: consumers of one tunnel on two nodes
// at once each get a different message, never one twice and never an
// error (the consumer-group race of the original relay).
func TestConcurrentConsumersOnTwoNodes(t *testing.T) {
	url := redistest.URL(t)
	var nodes []*servertest.Node
	for range 2 {
		cfg := servertest.Config()
		cfg.Store = url
		nodes = append(nodes, servertest.Start(t, cfg))
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	const total = 300
	for i := range total {
		if r, err := do(c, "POST", nodes[i%2].URL+"/t/race", fmt.Sprint("m", i)); err != nil || r.status != 201 {
			t.Fatalf("produce %d: %v %v", i, r, err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for {
				r, err := do(c, "GET", nodes[w%2].URL+"/t/race", "")
				if err != nil || (r.status != 200 && r.status != 204) {
					t.Errorf("consume: %v %v", r, err)
					return
				}
				if r.status == 204 {
					return
				}
				mu.Lock()
				seen[r.body]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != total {
		t.Fatalf("consumed %d distinct messages, want %d", len(seen), total)
	}
	for body, n := range seen {
		if n != 1 {
			t.Fatalf("%s consumed %d times", body, n)
		}
	}
}

// TestRedisNeedsAClusterSecret: nodes on Redis forward requests to each
// other, so a node refuses to start there without --cluster-secret (a
// node could not tell another node's forwarded request from a user's),
// unless --cluster-insecure says the network is trusted.
func TestRedisNeedsAClusterSecret(t *testing.T) {
	url := redistest.URL(t)
	cfg := servertest.Config()
	cfg.Store = url
	cfg.ClusterSecret = ""
	if srv, err := node.New(cfg); err == nil {
		srv.Shutdown(context.Background())
		t.Fatal("a node on Redis started without a cluster secret")
	} else if !strings.Contains(err.Error(), "--cluster-secret") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error does not say what to do, on one line: %v", err)
	}
	cfg.ClusterSecret = "short"
	if srv, err := node.New(cfg); err == nil {
		srv.Shutdown(context.Background())
		t.Fatal("a 5-character cluster secret was taken")
	}
	cfg.ClusterSecret = ""
	cfg.ClusterInsecure = true
	servertest.Start(t, cfg)
}
