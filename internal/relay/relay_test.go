package relay_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/relaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// node is a hub with a user side: /u/<name>/<rest> is relayed to backend
// <name> with path /<rest>.
type node struct {
	hub      *relay.Hub
	url      string
	reg      *prometheus.Registry
	shutdown bool // the test shut the hub down itself
}

// settle shuts the hub down, which waits for every relay to be accounted
// for, so the metrics can be read.
func (n *node) settle(t *testing.T) {
	t.Helper()
	n.shutdown = true
	if err := n.hub.Shutdown(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func startNode(t *testing.T, dir *relaytest.Directory, mutate ...func(*relay.Options)) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := relay.DefaultOptions("test")
	for _, m := range mutate {
		m(&opts)
	}
	deps := capability.Deps{Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if dir != nil {
		deps.Directory = dir
	}
	hub, err := relay.New(opts, deps)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{hub: hub, reg: reg}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/u/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		name, path, _ := strings.Cut(rest, "/")
		hub.Serve(w, r, relay.Target{Name: name, Path: "/" + path, RawQuery: r.URL.RawQuery, MaxRequestBodyBytes: 1 << 20})
	}))
	n.url = srv.URL
	hub.SetAdvertiseURL(srv.URL)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hub.Shutdown(ctx); err != nil && !n.shutdown {
			t.Errorf("hub shutdown: %v", err)
		}
		srv.Close()
	})
	return n
}

// backend starts an HTTP server and returns a RoundTripper that dials it,
// as the native agent's transport dials a stream.
func backend(t *testing.T, h http.HandlerFunc) http.RoundTripper {
	t.Helper()
	srv := httptest.NewServer(h)
	addr := srv.Listener.Addr().String()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.CloseClientConnections()
		srv.Close()
	})
	return tr
}

func client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func get(t *testing.T, c *http.Client, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", url, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRelayPathQueryHeadersTrailers(t *testing.T) {
	n := startNode(t, nil)
	reg := n.hub.Register("b1", backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprintf(w, "%s %s %s host=%s xff=%s", r.Method, r.URL.Path, r.URL.RawQuery, r.Host, r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Sum", "42")
	}))
	defer reg.Close()
	c := client(t)
	resp, err := c.Get(n.url + "/u/b1/a/b?x=1&y=2")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	host := strings.TrimPrefix(n.url, "http://")
	if want := "GET /a/b x=1&y=2 host=" + host + " xff=127.0.0.1"; resp.StatusCode != 418 || string(body) != want {
		t.Fatalf("got %d %q, want 418 %q", resp.StatusCode, body, want)
	}
	if got := resp.Header.Values("Set-Cookie"); len(got) != 2 {
		t.Errorf("Set-Cookie %v", got)
	}
	if resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("trailer %v", resp.Trailer)
	}
	n.settle(t)
	if got := testutil.ToFloat64(mustCounter(t, n.reg, "postern_relay_requests_total", map[string]string{"via": "local", "outcome": "ok"})); got != 1 {
		t.Errorf("ok count %v", got)
	}
	if got := testutil.ToFloat64(mustCounter(t, n.reg, "postern_relay_bytes_total", map[string]string{"direction": "down"})); got != float64(len(body)) {
		t.Errorf("bytes down %v, want %d", got, len(body))
	}
}

func TestNoBackendAndCustomAnswer(t *testing.T) {
	n := startNode(t, nil)
	c := client(t)
	if st, body, _ := get(t, c, n.url+"/u/none/x"); st != 502 || body != `no backend named "none"` {
		t.Fatalf("got %d %q", st, body)
	}
	reg := n.hub.Register("gone", backend(t, func(w http.ResponseWriter, r *http.Request) {}))
	if !n.hub.Has("gone") {
		t.Fatal("not registered")
	}
	reg.Close()
	reg.Close() // idempotent
	if n.hub.Has("gone") {
		t.Fatal("still registered")
	}
	st, _, _ := get(t, c, n.url+"/u/gone/")
	if st != 502 {
		t.Fatalf("after close: %d", st)
	}
	n.settle(t)
	if got := testutil.ToFloat64(mustCounter(t, n.reg, "postern_relay_requests_total", map[string]string{"outcome": "no_backend"})); got != 2 {
		t.Errorf("no_backend count %v", got)
	}
}

// mustCounter finds one series of a gathered metric.
func mustCounter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) prometheus.Collector {
	t.Helper()
	return collectorFunc(func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		total := 0.0
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		metric:
			for _, m := range mf.GetMetric() {
				for k, v := range labels {
					found := false
					for _, lp := range m.GetLabel() {
						if lp.GetName() == k && lp.GetValue() == v {
							found = true
						}
					}
					if !found {
						continue metric
					}
				}
				switch {
				case m.Counter != nil:
					total += m.Counter.GetValue()
				case m.Gauge != nil:
					total += m.Gauge.GetValue()
				case m.Histogram != nil:
					total += float64(m.Histogram.GetSampleCount())
				}
			}
		}
		return total
	})
}

// collectorFunc exposes one computed value as a gauge for testutil.
type collectorFunc func() float64

func (f collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	ch <- prometheus.NewDesc("value", "", nil, nil)
}

func (f collectorFunc) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("value", "", nil, nil), prometheus.GaugeValue, f())
}

func TestStreamingBothWays(t *testing.T) {
	n := startNode(t, nil)
	gotFirst := make(chan string, 1)
	sendSecond := make(chan struct{})
	reg := n.hub.Register("s", backend(t, func(w http.ResponseWriter, r *http.Request) {
		// The request body streams: its first line arrives while the user
		// is still sending.
		http.NewResponseController(w).EnableFullDuplex()
		br := bufio.NewReader(r.Body)
		line, _ := br.ReadString('\n')
		gotFirst <- line
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		<-sendSecond
		rest, _ := io.ReadAll(br)
		io.WriteString(w, "second:"+string(rest))
	}))
	defer reg.Close()
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", n.url+"/u/s/", pr)
	respCh := make(chan *http.Response, 1)
	errCh := make(chan error, 1)
	go func() {
		resp, err := client(t).Do(req)
		if err != nil {
			errCh <- err
			return
		}
		respCh <- resp
	}()
	io.WriteString(pw, "hello\n")
	if line := <-gotFirst; line != "hello\n" {
		t.Fatalf("backend got %q", line)
	}
	var resp *http.Response
	select {
	case resp = <-respCh:
	case err := <-errCh:
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); line != "first\n" {
		t.Fatalf("first line %q %v (the response must stream before the backend finishes)", line, err)
	}
	io.WriteString(pw, "tail")
	pw.Close()
	close(sendSecond)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second:tail" {
		t.Fatalf("rest %q %v", rest, err)
	}
}

// A response of known length that arrives slowly is not held back until
// its end: what came is flushed to the user within the flush interval.
func TestKnownLengthResponseTrickles(t *testing.T) {
	n := startNode(t, nil)
	release := make(chan struct{})
	reg := n.hub.Register("k", backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "hello")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "world")
	}))
	defer reg.Close()
	req, _ := http.NewRequestWithContext(ctxT(t), "GET", n.url+"/u/k/", nil)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ContentLength != 10 {
		t.Fatalf("content length %d", resp.ContentLength)
	}
	first := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "hello" {
		t.Fatalf("first part %q %v (held back until the end?)", first, err)
	}
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "world" {
		t.Fatalf("rest %q %v", rest, err)
	}
}

func TestRequestBodyLimit(t *testing.T) {
	n := startNode(t, nil)
	reg := n.hub.Register("lim", backend(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	defer reg.Close()
	resp, err := client(t).Post(n.url+"/u/lim/", "text/plain", strings.NewReader(strings.Repeat("x", 2<<20)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestCancellationUserToBackend(t *testing.T) {
	n := startNode(t, nil)
	started := make(chan struct{})
	backendSaw := make(chan error, 1)
	reg := n.hub.Register("c", backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
		backendSaw <- r.Context().Err()
	}))
	defer reg.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", n.url+"/u/c/", nil)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	resp.Body.Close()
	select {
	case err := <-backendSaw:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("backend context: %v", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("the backend never saw the user go away")
	}
}

func TestCancellationBackendToUser(t *testing.T) {
	n := startNode(t, nil)
	reg := n.hub.Register("abort", backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the backend dies mid-response
	}))
	defer reg.Close()
	// The user sees an error: before the headers when the cut comes
	// within the flush interval of a response of known length, else
	// while reading the body.
	resp, err := client(t).Get(n.url + "/u/abort/")
	if err == nil {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("a cut response looked complete: %q", b)
		}
	}
	n.settle(t)
	if got := testutil.ToFloat64(mustCounter(t, n.reg, "postern_relay_requests_total", map[string]string{"outcome": "aborted"})); got != 1 {
		t.Errorf("aborted count %v", got)
	}
}

func TestChunkedBackendCutIsAnError(t *testing.T) {
	n := startNode(t, nil)
	reg := n.hub.Register("cut", backend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	defer reg.Close()
	resp, err := client(t).Get(n.url + "/u/cut/")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("a cut chunked response looked complete")
	}
}

func echoWebsocket(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo:"), b...)); err != nil {
				return
			}
		}
	}
}

func wsRoundTrip(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ctx := ctxT(t)
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		msg := fmt.Sprintf("m%d", i)
		if err := c.Write(ctx, websocket.MessageBinary, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, b, err := c.Read(ctx)
		if err != nil || string(b) != "echo:"+msg {
			t.Fatalf("got %q %v", b, err)
		}
	}
	return c
}

func TestWebsocketUpgrade(t *testing.T) {
	n := startNode(t, nil)
	reg := n.hub.Register("ws", backend(t, echoWebsocket(t)))
	defer reg.Close()
	c := wsRoundTrip(t, n.url+"/u/ws/")
	c.Close(websocket.StatusNormalClosure, "")
}

func TestSeveralBackendsShareTheWork(t *testing.T) {
	n := startNode(t, nil)
	hold := make(chan struct{})
	held := make(chan struct{}, 1)
	var mu sync.Mutex
	served := map[string]int{}
	mk := func(id string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			served[id]++
			mu.Unlock()
			if r.URL.Path == "/hold" {
				held <- struct{}{}
				<-hold
			}
			io.WriteString(w, id)
		}
	}
	a := n.hub.Register("pool", backend(t, mk("a")))
	b := n.hub.Register("pool", backend(t, mk("b")))
	defer a.Close()
	defer b.Close()
	c := client(t)
	first := make(chan string, 1)
	go func() {
		_, body, _ := get(t, c, n.url+"/u/pool/hold")
		first <- body
	}()
	<-held
	// One backend is busy: the next requests go to the other one.
	for range 3 {
		if st, _, _ := get(t, c, n.url+"/u/pool/x"); st != 200 {
			t.Fatalf("status %d", st)
		}
	}
	close(hold)
	holder := <-first
	mu.Lock()
	defer mu.Unlock()
	other := map[string]string{"a": "b", "b": "a"}[holder]
	if served[other] != 3 || served[holder] != 1 {
		t.Fatalf("served %v with %s held: the idle backend should take every request", served, holder)
	}
	a.Close()
	if got := testutil.ToFloat64(mustCounter(t, n.reg, "postern_relay_backends", nil)); got != 1 {
		t.Errorf("backends gauge %v after one of two left", got)
	}
}

func TestForwardingBetweenNodes(t *testing.T) {
	dir := relaytest.NewDirectory()
	a := startNode(t, dir)
	b := startNode(t, dir)
	reg := a.hub.Register("far", backend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(relay.ForwardedHeader) != "" {
			t.Error("the forwarding mark reached the backend")
		}
		fmt.Fprintf(w, "%s?%s host=%s", r.URL.Path, r.URL.RawQuery, r.Host)
	}))
	select {
	case <-a.hub.Announced("far"):
	case <-ctxT(t).Done():
		t.Fatal("never announced")
	}
	c := client(t)
	// Through node b, which has no backend "far": forwarded to a, with the
	// user's Host kept.
	st, body, _ := get(t, c, b.url+"/u/far/p/q?z=1")
	hostB := strings.TrimPrefix(b.url, "http://")
	if st != 200 || body != "/p/q?z=1 host="+hostB {
		t.Fatalf("via b: %d %q", st, body)
	}
	reg.Close()
	if err := dir.WaitFor(ctxT(t), "test", "far", 0); err != nil {
		t.Fatalf("not unregistered: %v", err)
	}
	if st, _, _ := get(t, c, b.url+"/u/far/"); st != 502 {
		t.Fatalf("after the backend left: %d", st)
	}
	// A websocket through b reaches a's backend too.
	ws := a.hub.Register("farws", backend(t, echoWebsocket(t)))
	defer ws.Close()
	<-a.hub.Announced("farws")
	conn := wsRoundTrip(t, b.url+"/u/farws/")
	conn.Close(websocket.StatusNormalClosure, "")
	b.settle(t)
	for outcome, want := range map[string]float64{"ok": 1, "upgraded": 1} {
		if got := testutil.ToFloat64(mustCounter(t, b.reg, "postern_relay_requests_total", map[string]string{"via": "forwarded", "outcome": outcome})); got != want {
			t.Errorf("b forwarded %s: %v, want %v", outcome, got, want)
		}
	}
}

func TestForwardedRequestIsNeverForwardedAgain(t *testing.T) {
	dir := relaytest.NewDirectory()
	a := startNode(t, dir)
	b := startNode(t, dir)
	reg := a.hub.Register("x", backend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "a") }))
	defer reg.Close()
	<-a.hub.Announced("x")
	req, _ := http.NewRequest("GET", b.url+"/u/x/", nil)
	req.Header.Set(relay.ForwardedHeader, "test")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Fatalf("a request marked forwarded was relayed again: %d", resp.StatusCode)
	}
	// A directory entry for a dead node: 502 at once, no hang.
	if err := dir.Register(context.Background(), "test", "ghost", "http://127.0.0.1:1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if st, body, _ := get(t, client(t), b.url+"/u/ghost/"); st != 502 || !strings.Contains(body, "cannot be reached") {
		t.Fatalf("dead node: %d %q", st, body)
	}
}

func TestShutdownDrainsAndCutsUpgrades(t *testing.T) {
	dir := relaytest.NewDirectory()
	n := startNode(t, dir)
	release := make(chan struct{})
	inHandler := make(chan struct{})
	reg := n.hub.Register("d", backend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			echoWebsocket(t)(w, r)
			return
		}
		if r.URL.Path != "/slow" {
			// A request sent before the drain began.
			io.WriteString(w, "new")
			return
		}
		io.WriteString(w, "start;")
		w.(http.Flusher).Flush()
		close(inHandler)
		<-release
		io.WriteString(w, "end")
	}))
	defer reg.Close()
	<-n.hub.Announced("d")
	ws := wsRoundTrip(t, n.url+"/u/d/")
	defer ws.CloseNow()

	c := client(t)
	resp, err := c.Get(n.url + "/u/d/slow")
	if err != nil {
		t.Fatal(err)
	}
	<-inHandler
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- n.hub.Shutdown(ctx)
	}()
	// New requests are refused while the drain waits for the slow one.
	for {
		st, _, _ := get(t, c, n.url+"/u/d/new")
		if st == 503 {
			break
		}
	}
	close(release)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "start;end" {
		t.Fatalf("drained response %q %v", b, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// The upgraded connection was cut, and the directory entry removed.
	if _, _, err := ws.Read(ctxT(t)); err == nil {
		t.Fatal("websocket survived the shutdown")
	}
	if err := dir.WaitFor(ctxT(t), "test", "d", 0); err != nil {
		t.Fatal(err)
	}
	if err := n.hub.Shutdown(context.Background()); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
}

func TestShutdownCutsWhatDoesNotFinish(t *testing.T) {
	n := startNode(t, nil)
	inHandler := make(chan struct{})
	reg := n.hub.Register("stuck", backend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "start")
		w.(http.Flusher).Flush()
		close(inHandler)
		<-r.Context().Done()
	}))
	defer reg.Close()
	resp, err := client(t).Get(n.url + "/u/stuck/")
	if err != nil {
		t.Fatal(err)
	}
	<-inHandler
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no time to drain
	n.shutdown = true
	if err := n.hub.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "1 relays cut") {
		t.Fatalf("shutdown: %v", err)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("a cut response looked complete")
	}
	resp.Body.Close()
}

func TestTransportErrorAnswer(t *testing.T) {
	n := startNode(t, nil)
	reg := n.hub.Register("e", roundTripper(func(*http.Request) (*http.Response, error) {
		return nil, httpapi.Errorf(http.StatusGatewayTimeout, "Timeout after 1s")
	}))
	defer reg.Close()
	if st, body, _ := get(t, client(t), n.url+"/u/e/"); st != 504 || body != "Timeout after 1s" {
		t.Fatalf("got %d %q", st, body)
	}
	reg2 := n.hub.Register("e2", roundTripper(func(*http.Request) (*http.Response, error) {
		return nil, errors.New("boom")
	}))
	defer reg2.Close()
	if st, body, _ := get(t, client(t), n.url+"/u/e2/"); st != 502 || !strings.Contains(body, "boom") {
		t.Fatalf("got %d %q", st, body)
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestDirectoryEntriesAreRenewedWhileTheBackendLives(t *testing.T) {
	dir := relaytest.NewDirectory()
	n := startNode(t, dir, func(o *relay.Options) { o.RegisterTTL = 90 * time.Millisecond })
	reg := n.hub.Register("renewed", backend(t, func(w http.ResponseWriter, r *http.Request) {}))
	// The first registration, then renewals every third of the TTL: the
	// entry never lapses while the backend is connected.
	if err := dir.WaitForRegisters(ctxT(t), "test", "renewed", 4); err != nil {
		t.Fatal(err)
	}
	addrs, err := dir.Lookup(context.Background(), "test", "renewed")
	if err != nil || len(addrs) != 1 || addrs[0] != n.url {
		t.Fatalf("lookup %v %v", addrs, err)
	}
	reg.Close()
	if err := dir.WaitFor(ctxT(t), "test", "renewed", 0); err != nil {
		t.Fatal(err)
	}
}

// writerToBody is a transport's response body that writes itself (as the
// long-poll transport's does): parts written one by one, each flushed
// when flush is set, trailers filled at the end, or an error after the
// parts.
type writerToBody struct {
	parts   []string
	trailer http.Header
	fail    error
	flushed chan struct{} // receives after each flush, when not nil
	written int
}

func (b *writerToBody) Read([]byte) (int, error) {
	return 0, errors.New("the hub must use WriteTo")
}

func (b *writerToBody) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, p := range b.parts {
		k, err := io.WriteString(w, p)
		n += int64(k)
		if err != nil {
			return n, err
		}
		if b.flushed != nil {
			if err := w.(interface{ Flush() error }).Flush(); err != nil {
				return n, err
			}
			b.flushed <- struct{}{}
		}
	}
	if b.fail != nil {
		return n, b.fail
	}
	b.trailer.Set("X-Late", "done")
	return n, nil
}

func (b *writerToBody) Close() error { return nil }

type bodyTransport func(*http.Request) *http.Response

func (f bodyTransport) RoundTrip(r *http.Request) (*http.Response, error) { return f(r), nil }

// TestBodyThatWritesItself: a backend body that implements io.WriterTo is
// written to the user by its WriteTo after the headers (a stream flushed
// as it goes), with the trailers announced and late; an error in it cuts
// the user's response.
func TestBodyThatWritesItself(t *testing.T) {
	n := startNode(t, nil)
	flushed := make(chan struct{}, 4)
	var fail error
	reg := n.hub.Register("self", bodyTransport(func(r *http.Request) *http.Response {
		tr := http.Header{"X-Early": {"yes"}}
		return &http.Response{StatusCode: 200, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"X-Head": {"1"}}, ContentLength: -1, Trailer: tr, Request: r,
			Body: &writerToBody{parts: []string{"first\n", "second\n"}, trailer: tr, fail: fail, flushed: flushed}}
	}))
	defer reg.Close()
	resp, err := client(t).Get(n.url + "/u/self/")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); line != "first\n" || err != nil {
		t.Fatalf("first part %q %v", line, err)
	}
	<-flushed // the first part reached the user before the second was written
	rest, err := io.ReadAll(br)
	resp.Body.Close()
	if string(rest) != "second\n" || err != nil {
		t.Fatalf("rest %q %v", rest, err)
	}
	if resp.Header.Get("X-Head") != "1" || resp.Trailer.Get("X-Early") != "yes" || resp.Trailer.Get("X-Late") != "done" {
		t.Fatalf("headers %v trailers %v", resp.Header, resp.Trailer)
	}

	fail = errors.New("backend cut")
	resp, err = client(t).Get(n.url + "/u/self/")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("a cut response looked complete")
	}
	n.settle(t)
	for outcome, want := range map[string]float64{"ok": 1, "aborted": 1} {
		if got := testutil.ToFloat64(mustCounter(t, n.reg, "postern_relay_requests_total", map[string]string{"outcome": outcome})); got != want {
			t.Errorf("%s relays: %v, want %v", outcome, got, want)
		}
	}
	if got := testutil.ToFloat64(mustCounter(t, n.reg, "postern_relay_bytes_total", map[string]string{"direction": "down"})); got != 26 {
		t.Errorf("bytes down: %v, want 26", got)
	}
}
