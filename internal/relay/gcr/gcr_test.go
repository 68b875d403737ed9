package gcr_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/gcr"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
	"github.com/postern/postern/internal/relay/gcr/wire"
	"github.com/postern/postern/internal/relay/relaytest"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }

// env is one running node and a client for it.
type env struct {
	t    *testing.T
	node *servertest.Node
	c    *http.Client
}

func start(t *testing.T, mutate func(*node.Config)) *env {
	t.Helper()
	cfg := servertest.Config()
	if mutate != nil {
		mutate(&cfg)
	}
	n := servertest.Start(t, cfg)
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	t.Cleanup(tr.CloseIdleConnections)
	return &env{t: t, node: n, c: &http.Client{Transport: tr}}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type result struct {
	status int
	body   string
	h      http.Header
	tr     http.Header
	err    error // reading the body
}

// do sends a request; hdr is name, value pairs.
func (e *env) do(method, path string, body io.Reader, hdr ...string) result {
	e.t.Helper()
	return e.doCtx(context.Background(), method, e.node.URL+path, body, hdr...)
}

func (e *env) doCtx(ctx context.Context, method, u string, body io.Reader, hdr ...string) result {
	e.t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := e.c.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, body: string(b), h: resp.Header, tr: resp.Trailer, err: err}
}

// async starts a user request and returns its result later.
func (e *env) async(method, path string, body io.Reader, hdr ...string) <-chan result {
	ch := make(chan result, 1)
	go func() { ch <- e.doCtx(context.Background(), method, e.node.URL+path, body, hdr...) }()
	return ch
}

func (e *env) want(r result, status int, body string) {
	e.t.Helper()
	if r.err != nil || r.status != status || r.body != body {
		e.t.Fatalf("got %d %q (err %v), want %d %q", r.status, r.body, r.err, status, body)
	}
}

// poll is one GET /server/request as the relay client sends it.
func (e *env) poll(name string, hdr ...string) (result, *wire.Request) {
	e.t.Helper()
	r := e.do("GET", "/server/request?server="+url.QueryEscape(name), nil, hdr...)
	if r.status != 200 {
		return r, nil
	}
	if ct := r.h.Get("Content-Type"); ct != wire.RequestContentType {
		e.t.Fatalf("poll Content-Type %q", ct)
	}
	req, err := wire.UnmarshalRequest([]byte(r.body))
	if err != nil {
		e.t.Fatalf("poll body: %v", err)
	}
	return r, req
}

// pollAsync parks a poll and waits until the node counts parked polls
// for name, this one included.
func (e *env) pollAsync(name string, parked int, hdr ...string) <-chan *wire.Request {
	e.t.Helper()
	ch := make(chan *wire.Request, 1)
	go func() {
		_, req := e.poll(name, hdr...)
		ch <- req
	}()
	if err := e.node.WaitForRelayPolls(ctxT(e.t), name, parked); err != nil {
		e.t.Fatal(err)
	}
	return ch
}

// post is one POST /server/response.
func (e *env) post(m *wire.Response, hdr ...string) result {
	e.t.Helper()
	return e.postRaw(m.Marshal(), hdr...)
}

func (e *env) postRaw(b []byte, hdr ...string) result {
	e.t.Helper()
	return e.do("POST", "/server/response", bytes.NewReader(b), append([]string{"Content-Type", wire.ResponseContentType}, hdr...)...)
}

var idRE = regexp.MustCompile(`^([^:]+):[0-9a-f]{32}$`)

// backendServer is the backend a relay client reaches.
func backendServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv.URL
}

// runClient runs a relay client for name against the node until the test
// ends, and waits for its polls to be parked.
func (e *env) runClient(name, backendURL string, mutate func(*gcrclient.Options)) <-chan error {
	e.t.Helper()
	o := gcrclient.Options{RelayURL: e.node.URL, ServerName: name, BackendURL: backendURL}
	if mutate != nil {
		mutate(&o)
	}
	c, err := gcrclient.New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
	n := o.NumPendingRequests
	if n == 0 {
		n = 1
	}
	if err := e.node.WaitForRelayPolls(ctxT(e.t), name, n); err != nil {
		e.t.Fatal(err)
	}
	return done
}

func TestRelayRequestAndResponse(t *testing.T) {
	e := start(t, nil)
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.Header().Set("X-Seen", fmt.Sprintf("%s %s %s host=%s multi=%v", r.Method, r.URL.Path, r.URL.RawQuery, r.Host, r.Header.Values("X-Multi")))
		w.WriteHeader(http.StatusCreated)
		w.Write(append([]byte("got:"), body...))
	})
	e.runClient("robot-1", be, nil)
	r := e.do("PUT", "/client/robot-1/api/v1/items?x=1&y=%20", strings.NewReader("payload"),
		"X-Multi", "1", "X-Multi", "2", "Host", "relay.example")
	e.want(r, 201, "got:payload")
	if got := r.h.Get("X-Seen"); got != "PUT /api/v1/items x=1&y=%20 host=relay.example multi=[1 2]" {
		t.Errorf("backend saw %q", got)
	}
	if got := r.h.Values("Set-Cookie"); len(got) != 2 {
		t.Errorf("Set-Cookie %v", got)
	}
	// An empty rest is "/".
	r = e.do("GET", "/client/robot-1", nil)
	if r.status != 201 || !strings.Contains(r.h.Get("X-Seen"), "GET / ") {
		t.Errorf("empty rest: %d %q", r.status, r.h.Get("X-Seen"))
	}
	// The original's texts, byte for byte.
	e.want(e.do("GET", "/client//x", nil), 400, `request path too short: "/client//x" missing remote server identifier after "/client/"`+"\n")
	e.want(e.do("GET", "/client/", nil), 400, `request path too short: "/client/" missing remote server identifier after "/client/"`+"\n")
}

func TestWireOfTheProtocol(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Relay.PollTimeout = 50 * time.Millisecond })
	e.want(e.do("GET", "/server/request", nil), 400, "Missing server query parameter\n")
	// Nothing to hand out: 408, which the relay client takes as "poll again".
	r, _ := e.poll("w")
	e.want(r, 408, "No request received within timeout\n")

	// The user's request waits for a poll (the pickup timeout is 10 s);
	// polls come until one takes it, as the relay client's do (a poll
	// parked first could meet its 50 ms timeout before the request came,
	// on a loaded machine).
	user := e.async("POST", "/client/w/p/a%2Fb?q=1&q=2", strings.NewReader("body"), "X-A", "1", "X-A", "2", "Host", "h.example")
	var req *wire.Request
	for req == nil {
		if r, req = e.poll("w"); req == nil && r.status != 408 {
			t.Fatalf("poll: %d %q", r.status, r.body)
		}
	}
	if m := idRE.FindStringSubmatch(req.ID); m == nil || m[1] != "w" {
		t.Fatalf("id %q", req.ID)
	}
	if req.Method != "POST" || req.URL != "http://invalid/p/a%2Fb?q=1&q=2" || req.Host != "h.example" || string(req.Body) != "body" {
		t.Fatalf("request %+v", req)
	}
	var xa []string
	for _, h := range req.Headers {
		if h.Name == "X-A" {
			xa = append(xa, h.Value)
		}
		if h.Name == "User-Agent" && h.Value == "" {
			t.Error("empty User-Agent relayed")
		}
	}
	if len(xa) != 2 {
		t.Errorf("multi-valued header %v in %v", xa, req.Headers)
	}

	// The response: status and headers, then chunks, a keep-alive, the end
	// with trailers. Each post answers ok once the user side took it.
	ok := func(r result) {
		t.Helper()
		if r.status != 200 || r.body != "ok" || r.h.Get("Content-Type") != "text/plain" {
			t.Fatalf("post: %d %q %q", r.status, r.body, r.h.Get("Content-Type"))
		}
	}
	ok(e.post(&wire.Response{HasID: true, ID: req.ID, HasStatus: true, StatusCode: 202,
		Headers: []wire.Header{{Name: "Content-Type", Value: "text/x-test"}, {Name: "Grpc-Message", Value: "fine"}, {Name: "Bad\nName", Value: "x"}, {Name: "X-V", Value: "a\r\nb"}}, Body: []byte("one,")}))
	ok(e.post(&wire.Response{HasID: true, ID: req.ID}))
	ok(e.post(&wire.Response{HasID: true, ID: req.ID, Body: []byte("two,")}))
	ok(e.post(&wire.Response{HasID: true, ID: req.ID, Body: []byte("three"), EOF: true,
		Trailers: []wire.Header{{Name: "X-Checksum", Value: "abc"}, {Name: "X-Checksum", Value: "abc"}}}))
	res := <-user
	e.want(res, 202, "one,two,three")
	if res.h.Get("Content-Type") != "text/x-test" || res.h.Get("X-V") != "" {
		t.Errorf("headers %v", res.h)
	}
	if got := res.tr.Values("X-Checksum"); len(got) != 1 || got[0] != "abc" {
		t.Errorf("trailer %v", res.tr)
	}
	if res.tr.Get("Grpc-Message") != "fine" {
		t.Errorf("Grpc-* header not repeated as trailer: %v", res.tr)
	}
	// The request is over.
	e.want(e.post(&wire.Response{HasID: true, ID: req.ID, Body: []byte("late")}), 400, "Duplicate or invalid request ID "+req.ID+"\n")
	e.want(e.do("POST", "/server/requeststream?id="+req.ID, nil), 410, "No ongoing request with id "+req.ID+"\n")

	// Bad messages.
	e.want(e.post(&wire.Response{HasStatus: true, StatusCode: 200}), 400, "HttpResponse without id\n")
	if r := e.postRaw([]byte{0x0a, 0x05, 'x'}); r.status != 400 || !strings.HasPrefix(r.body, "Invalid HttpResponse: ") {
		t.Errorf("garbage: %d %q", r.status, r.body)
	}
	e.want(e.post(&wire.Response{HasID: true, ID: "nope"}), 400, "Duplicate or invalid request ID nope\n")
	e.want(e.do("GET", "/server/requeststream", nil), 400, "Missing id query parameter\n")
	e.want(e.do("GET", "/server/requeststream?id=w:00000000000000000000000000000000", nil), 410, "No ongoing request with id w:00000000000000000000000000000000\n")
	e.want(e.do("GET", "/healthz", nil), 200, "ok")
}

func TestStreamsChunksAsTheyCome(t *testing.T) {
	e := start(t, nil)
	polled := e.pollAsync("s", 1)
	req, err := http.NewRequest("GET", e.node.URL+"/client/s/", nil)
	if err != nil {
		t.Fatal(err)
	}
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := e.c.Do(req)
		if err != nil {
			t.Error(err)
			close(respc)
			return
		}
		respc <- resp
	}()
	id := (<-polled).ID
	e.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("first\n")})
	resp := <-respc
	if resp == nil {
		t.FailNow()
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); line != "first\n" || err != nil {
		t.Fatalf("first chunk %q %v: not flushed before the next", line, err)
	}
	e.post(&wire.Response{HasID: true, ID: id, Body: []byte("second\n")})
	if line, err := br.ReadString('\n'); line != "second\n" || err != nil {
		t.Fatalf("second chunk %q %v", line, err)
	}
	e.post(&wire.Response{HasID: true, ID: id, EOF: true})
	if rest, err := io.ReadAll(br); len(rest) != 0 || err != nil {
		t.Fatalf("end %q %v", rest, err)
	}
}

func TestUnknownClient(t *testing.T) {
	e := start(t, nil)
	r := e.do("GET", "/client/nobody/x", nil)
	// The original's text, byte for byte, written without a newline.
	if r.status != 503 || r.body != `cannot reach the client "nobody"; check that it's turned on, set up, and connected to the internet (unknown client)` {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	if !idRE.MatchString(r.h.Get(gcr.RelayIDHeader)) {
		t.Errorf("relay id header %q", r.h.Get(gcr.RelayIDHeader))
	}
}

func TestNotPickedUp(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Relay.PollTimeout = 20 * time.Millisecond
		c.Relay.PickupTimeout = 100 * time.Millisecond
	})
	if r, _ := e.poll("idle"); r.status != 408 { // the backend is known now
		t.Fatalf("poll %d", r.status)
	}
	r := e.do("GET", "/client/idle/", nil)
	e.want(r, 500, `cannot reach the client "idle"; check that it's turned on, set up, and connected to the internet (timeout waiting for relay client to accept request); if the network config recently changed, try again in 1-2 minutes`+"\n")
}

// A request a poll took waits for its first chunk past the pickup
// timeout: that timeout bounds only the wait in the queue.
func TestTakenRequestOutlivesPickupTimeout(t *testing.T) {
	e := start(t, func(c *node.Config) {
		// The parked poll must still wait when the user's request comes:
		// 20 ms was too short on a loaded machine (the poll came back
		// empty). The first poll's 408 takes as long.
		c.Relay.PollTimeout = 2 * time.Second
		c.Relay.PickupTimeout = 50 * time.Millisecond
	})
	if r, _ := e.poll("idle"); r.status != 408 { // known, never polled again
		t.Fatalf("poll %d", r.status)
	}
	polled := e.pollAsync("slow", 1)
	user := e.async("GET", "/client/slow/", nil)
	req := <-polled
	if req == nil {
		t.Fatal("the parked poll came back empty")
	}
	id := req.ID
	// A request started after this one was taken is not picked up: this
	// one's pickup timeout has passed too by then.
	if r := e.do("GET", "/client/idle/", nil); r.status != 500 {
		t.Fatalf("request nobody polls for: %d %q", r.status, r.body)
	}
	e.want(e.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("late"), EOF: true}), 200, "ok")
	e.want(<-user, 200, "late")
}

func TestInactiveRequestTimesOut(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Relay.InactiveRequestTimeout = 150 * time.Millisecond })
	polled := e.pollAsync("slow", 1)
	user := e.async("GET", "/client/slow/", nil)
	id := (<-polled).ID
	e.want(<-user, 504, "Timeout after 150ms, indicating that the backend request took too long")
	e.want(e.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200}), 400, "Duplicate or invalid request ID "+id+"\n")
}

func TestMissingStatus(t *testing.T) {
	e := start(t, nil)
	polled := e.pollAsync("nh", 1)
	user := e.async("GET", "/client/nh/", nil)
	id := (<-polled).ID
	e.post(&wire.Response{HasID: true, ID: id, Body: []byte("no header")})
	e.want(<-user, 500, "Received no header from relay client")
	e.want(e.post(&wire.Response{HasID: true, ID: id, EOF: true}), 400, "Duplicate or invalid request ID "+id+"\n")
}

func TestInvalidStatus(t *testing.T) {
	e := start(t, nil)
	polled := e.pollAsync("bad", 1)
	user := e.async("GET", "/client/bad/", nil)
	id := (<-polled).ID
	e.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 42})
	e.want(<-user, 502, "relay client sent status code 42\n")
}

func TestReapedMidStreamCutsTheUser(t *testing.T) {
	// Long enough for the first chunk to arrive on a loaded machine (a
	// request reaped before it would end in a 5xx, not the cut tested).
	e := start(t, func(c *node.Config) { c.Relay.InactiveRequestTimeout = time.Second })
	for _, withLength := range []bool{false, true} {
		polled := e.pollAsync("cut", 1)
		user := e.async("GET", "/client/cut/", nil)
		id := (<-polled).ID
		m := &wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("partial")}
		if withLength {
			m.Headers = []wire.Header{{Name: "Content-Length", Value: "1000"}}
		}
		e.post(m)
		// The relay client goes silent: the request is reaped and the user
		// must see an error, not a complete-looking response.
		r := <-user
		if r.err == nil {
			t.Fatalf("content-length %v: a reaped response looked complete: %d %q", withLength, r.status, r.body)
		}
	}
	// Over HTTP/2 the stream is reset.
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	defer tr.CloseIdleConnections()
	h2 := &env{t: t, node: e.node, c: &http.Client{Transport: tr}}
	polled := e.pollAsync("cut", 1)
	user := h2.async("GET", "/client/cut/", nil)
	id := (<-polled).ID
	e.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("partial")})
	if r := <-user; r.err == nil {
		t.Fatalf("HTTP/2: a reaped response looked complete: %d %q", r.status, r.body)
	}
}

func TestUserGoneAnswers400(t *testing.T) {
	e := start(t, nil)
	polled := e.pollAsync("gone", 1)
	ctx, cancel := context.WithCancel(context.Background())
	respc := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.node.URL+"/client/gone/", nil)
		resp, err := e.c.Do(req)
		if err == nil {
			respc <- resp
		}
		close(respc)
	}()
	id := (<-polled).ID
	e.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("x")})
	if resp := <-respc; resp != nil {
		resp.Body.Close()
	}
	cancel()
	// As soon as the node has seen the user leave, chunks get 400.
	deadline := ctxT(t)
	for {
		r := e.post(&wire.Response{HasID: true, ID: id, Body: []byte("more")})
		if r.status == 400 {
			break
		}
		if r.status != 200 || deadline.Err() != nil {
			t.Fatalf("post after the user left: %d %q", r.status, r.body)
		}
	}
}

func TestUserCancellationReachesTheBackend(t *testing.T) {
	e := start(t, nil)
	backendDone := make(chan struct{})
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		defer close(backendDone)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
				io.WriteString(w, "tick\n")
				w.(http.Flusher).Flush()
			}
		}
	})
	e.runClient("ticker", be, func(o *gcrclient.Options) { o.ChunkDelay = 5 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.node.URL+"/client/ticker/", nil)
	resp, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); line != "tick\n" {
		t.Fatalf("%q %v", line, err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-backendDone:
	case <-ctxT(t).Done():
		t.Fatal("the backend never saw the user go away")
	}
}

func TestKeepAliveChunksKeepSlowRequestsAlive(t *testing.T) {
	// The timeout is long enough that a keep-alive chunk delayed by a
	// busy machine (the race detector, 2 shared cores) still comes in time:
	// with 1 s, a process starved of CPU for a second under load cut the
	// answer after "a".
	e := start(t, func(c *node.Config) { c.Relay.InactiveRequestTimeout = 2 * time.Second })
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "a")
		w.(http.Flusher).Flush()
		// A backend silent for more than two inactivity timeouts: the
		// relay client's empty keep-alive chunks (every ~40 ms here) hold
		// the request open.
		time.Sleep(4400 * time.Millisecond)
		io.WriteString(w, "b")
	})
	e.runClient("patient", be, func(o *gcrclient.Options) {
		o.ChunkDelay = 10 * time.Millisecond
		o.KeepAliveTicks = 3
	})
	e.want(e.do("GET", "/client/patient/", nil), 200, "ab")
}

// Answers without a body whatever their length says (HEAD, 304) reach
// the user as the backend gave them, with the original client's behaviour.
func TestHeadThroughTheRelay(t *testing.T) {
	e := start(t, nil)
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cached" {
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Write([]byte("hello there"))
	})
	e.runClient("head", be, nil)
	r := e.do("HEAD", "/client/head/x", nil)
	e.want(r, 200, "")
	if cl := r.h.Get("Content-Length"); cl != "11" {
		t.Fatalf("HEAD Content-Length %q, want the GET's 11", cl)
	}
	r = e.do("GET", "/client/head/cached", nil, "If-None-Match", `"v1"`)
	e.want(r, 304, "")
	if et := r.h.Get("ETag"); et != `"v1"` {
		t.Fatalf("304 ETag %q", et)
	}
}

func TestWebsocketThroughTheRelay(t *testing.T) {
	e := start(t, nil)
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
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
	})
	e.runClient("ws", be, func(o *gcrclient.Options) { o.ChunkDelay = 2 * time.Millisecond; o.NumPendingRequests = 2 })
	// postern relay's client takes upgrades through net/http's Transport
	// (its other requests go on connections of its own).
	e.runClient("tws", be, func(o *gcrclient.Options) { *o = gcrclient.Tuned(*o) })
	for _, name := range []string{"ws", "tws"} {
		ctx := ctxT(t)
		c, _, err := websocket.Dial(ctx, e.node.URL+"/client/"+name+"/socket", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		big := bytes.Repeat([]byte("z"), 3*gcr.DefaultBlockSize+17) // spans several request-stream blocks
		for _, msg := range [][]byte{[]byte("hello"), []byte{0, 1, 2, 255}, big} {
			if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
				t.Fatal(err)
			}
			_, b, err := c.Read(ctx)
			if err != nil || !bytes.Equal(b, append([]byte("echo:"), msg...)) {
				t.Fatalf("%s: echo of %d bytes: got %d bytes, %v", name, len(msg), len(b), err)
			}
		}
		if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
			t.Fatalf("%s: close: %v", name, err)
		}
	}
}

func TestLargeDownloadInBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("large transfer")
	}
	// 1 GiB; a tenth of it under the race detector, which is ten times
	// slower and would not fit the test budget.
	total := 1 << 30
	if raceEnabled {
		total = 96 << 20
	}
	// As the original client posts (a Content-Length), and in chunked
	// encoding, which the server reads sizing its buffer from the body's
	// declared length.
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			size := total
			if chunked {
				size = total / 4
			}
			largeDownload(t, size, true, func(o *gcrclient.Options) {
				o.MaxChunkSize = 1 << 20
				o.BlockSize = 256 << 10
				o.ChunkedPosts = chunked
			})
		})
	}
	// As postern relay posts: a body of known length in one message
	// streamed through the server; a body of unknown length in eager
	// chunks the server relays as they come.
	for _, known := range []bool{true, false} {
		t.Run(fmt.Sprintf("tuned,known-length=%v", known), func(t *testing.T) {
			largeDownload(t, total/4, known, func(o *gcrclient.Options) { *o = gcrclient.Tuned(*o) })
		})
	}
}

// largeDownload relays a download of total bytes of a known pattern,
// checks every byte, and that the heap did not grow with the size.
func largeDownload(t *testing.T, total int, known bool, opts func(*gcrclient.Options)) {
	const pattern = "0123456789abcdef"
	e := start(t, nil)
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		if known {
			w.Header().Set("Content-Length", fmt.Sprint(total))
		}
		block := bytes.Repeat([]byte(pattern), 4096)
		for sent := 0; sent < total; sent += len(block) {
			if _, err := w.Write(block); err != nil {
				return
			}
		}
	})
	e.runClient("big", be, opts)
	resp, err := e.c.Get(e.node.URL + "/client/big/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	peak := base
	buf := make([]byte, 1<<20)
	n := 0
	for next := 32 << 20; ; {
		k, err := resp.Body.Read(buf)
		for i, c := range buf[:k] {
			if c != pattern[(n+i)%len(pattern)] {
				t.Fatalf("byte %d is %q, want %q", n+i, c, pattern[(n+i)%len(pattern)])
			}
		}
		n += k
		if n >= next {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			next += 32 << 20
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
	}
	if n != total {
		t.Fatalf("got %d bytes, want %d", n, total)
	}
	// The relay holds a chunk or two per request, whatever the size.
	if grown := int64(peak) - int64(base); grown > 32<<20 {
		t.Fatalf("heap grew by %d MiB while relaying %d MiB", grown>>20, total>>20)
	}
}

func TestRequestBodyLimit(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Relay.MaxRequestBodyBytes = 1000 })
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	e.runClient("lim", be, nil)
	e.want(e.do("POST", "/client/lim/", strings.NewReader(strings.Repeat("x", 1000))), 200, strings.Repeat("x", 1000))
	r := e.do("POST", "/client/lim/", strings.NewReader(strings.Repeat("x", 1001)))
	if r.status != 413 {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	// Unknown length, too long.
	pr, pw := io.Pipe()
	go func() { pw.Write(make([]byte, 5000)); pw.Close() }()
	if r := e.do("POST", "/client/lim/", pr); r.status != 413 {
		t.Fatalf("streamed: got %d %q %v", r.status, r.body, r.err)
	}
}

func TestSeveralRelayClientsShareTheWork(t *testing.T) {
	e := start(t, nil)
	var mu sync.Mutex
	served := map[string]int{}
	for _, id := range []string{"a", "b"} {
		be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			served[id]++
			mu.Unlock()
			io.WriteString(w, id)
		})
		e.runClient("shared", be, nil)
	}
	if err := e.node.WaitForRelayPolls(ctxT(t), "shared", 2); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if r := e.do("GET", "/client/shared/", nil); r.status != 200 {
			t.Fatalf("%d %q", r.status, r.body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if served["a"] == 0 || served["b"] == 0 || served["a"]+served["b"] != 10 {
		t.Fatalf("served %v", served)
	}
}

func TestServerNameHeaderOverH2C(t *testing.T) {
	e := start(t, nil)
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/pkg.Svc/Fail" {
			// A trailers-only gRPC error: the status comes as headers.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "5")
			w.Header().Set("Grpc-Message", "not found")
			w.WriteHeader(200)
			return
		}
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		fmt.Fprintf(w, "path=%s te=%s", r.URL.Path, r.Header.Get("Te"))
		w.Header().Set("Grpc-Status", "0")
	})
	e.runClient("grpcbot", be, nil)
	// A gRPC-like client: HTTP/2 over cleartext with prior knowledge.
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	defer tr.CloseIdleConnections()
	h2 := &http.Client{Transport: tr}
	call := func(path string) (*http.Response, string) {
		req, _ := http.NewRequest("POST", e.node.URL+path, strings.NewReader("msg"))
		req.Header.Set(gcr.ServerNameHeader, "grpcbot")
		req.Header.Set("Te", "trailers")
		req.Header.Set("Content-Type", "application/grpc")
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}
	resp, body := call("/pkg.Svc/Method")
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || body != "path=/pkg.Svc/Method te=trailers" || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("%s %d %q trailers %v", resp.Proto, resp.StatusCode, body, resp.Trailer)
	}
	resp, _ = call("/pkg.Svc/Fail")
	if resp.Header.Get("Grpc-Status") != "5" || resp.Trailer.Get("Grpc-Status") != "5" || resp.Trailer.Get("Grpc-Message") != "not found" {
		t.Fatalf("trailers-only: header %v trailer %v", resp.Header, resp.Trailer)
	}
	// Paths other capabilities own stay theirs; unowned ones without the
	// header are 404.
	if r := e.do("GET", "/health", nil, gcr.ServerNameHeader, "grpcbot"); r.body != "OK" {
		t.Errorf("/health with X-Server-Name: %d %q", r.status, r.body)
	}
	if r := e.do("GET", "/t/x/len", nil, gcr.ServerNameHeader, "grpcbot"); r.status != 204 {
		t.Errorf("tunnel path with X-Server-Name: %d %q", r.status, r.body)
	}
	if r := e.do("GET", "/nowhere", nil); r.status != 404 {
		t.Errorf("unowned path: %d", r.status)
	}
}

const tokenFile = `
[[token]]
name = "robot"
secret = "robot-secret-0123456789"
[[token.grant]]
actions = ["serve"]
paths = ["/relay/bot", "/relay/open"]

[[token]]
name = "user"
secret = "user-secret-0123456789"
[[token.grant]]
actions = ["call"]
paths = ["/relay/bot"]

[[anonymous.grant]]
actions = ["call"]
paths = ["/relay/open"]
`

func TestScopedTokens(t *testing.T) {
	pol, err := auth.Parse([]byte(tokenFile))
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, func(c *node.Config) { c.Policy = pol; c.Relay.PollTimeout = 20 * time.Millisecond })
	robot := []string{"Authorization", "Bearer robot-secret-0123456789"}
	user := []string{"Authorization", "Bearer user-secret-0123456789"}
	want403 := func(r result, what string) {
		t.Helper()
		if r.status != 403 {
			t.Fatalf("%s: %d %q", what, r.status, r.body)
		}
	}
	r, _ := e.poll("bot")
	want403(r, "poll without a token")
	r, _ = e.poll("bot", user...)
	want403(r, "poll with a call token")
	r, _ = e.poll("other", robot...)
	want403(r, "poll for another name")
	want403(e.post(&wire.Response{HasID: true, ID: "bot:00000000000000000000000000000000"}), "post without a token")
	want403(e.do("GET", "/server/requeststream?id=bot:00000000000000000000000000000000", nil), "stream without a token")

	// The original relay client exits on 403.
	c, err := gcrclient.New(gcrclient.Options{RelayURL: e.node.URL, ServerName: "bot", BackendURL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctxT(t)); err != gcrclient.ErrForbidden {
		t.Fatalf("relay client without a token: %v", err)
	}

	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "auth=%q query=%q", r.Header.Get("Authorization"), r.URL.RawQuery)
	})
	e.runClient("bot", be, func(o *gcrclient.Options) { o.Token = "robot-secret-0123456789" })
	want403(e.do("GET", "/client/bot/", nil), "user without a token")
	want403(e.do("GET", "/client/bot/", nil, robot...), "user with a serve token")
	// postern's own token never reaches the backend; the backend's does.
	e.want(e.do("GET", "/client/bot/?a=1", nil, user...), 200, `auth="" query="a=1"`)
	e.want(e.do("GET", "/client/bot/?a=1&access_token=user-secret-0123456789", nil), 200, `auth="" query="a=1"`)

	// Anonymous grants let users in without a token; the user's own
	// Authorization, not a postern token, reaches the backend.
	if r := e.do("GET", "/client/open/", nil); r.status != 503 || !strings.Contains(r.body, "unknown client") {
		t.Fatalf("anonymous call before a backend: %d %q", r.status, r.body)
	}
	e.runClient("open", be, func(o *gcrclient.Options) { o.Token = "robot-secret-0123456789" })
	e.want(e.do("GET", "/client/open/", nil, "Authorization", "Bearer the-backends-own"), 200, `auth="Bearer the-backends-own" query=""`)
}

func TestRelayClientConnectedLogAndMetrics(t *testing.T) {
	var logs syncBuffer
	e := start(t, func(c *node.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
		c.Relay.PollTimeout = 20 * time.Millisecond
	})
	if r, _ := e.poll("logged"); r.status != 408 {
		t.Fatal(r.status)
	}
	if r, _ := e.poll("logged"); r.status != 408 {
		t.Fatal(r.status)
	}
	out := logs.String()
	if n := strings.Count(out, `"msg":"Relay client connected","ServerName":"logged"`); n != 1 {
		t.Errorf("%d 'Relay client connected' lines in:\n%s", n, out)
	}
	if !regexp.MustCompile(`"msg":"Relay server listening","Port":\d+`).MatchString(out) {
		t.Errorf("no 'Relay server listening' line in:\n%s", out)
	}
	m := e.do("GET", "/metrics", nil)
	if !strings.Contains(m.body, `postern_relay_backends{namespace="relay"} 1`) {
		t.Errorf("metrics:\n%s", grep(m.body, "postern_relay"))
	}
}

func TestForgetsInactiveBackends(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Relay.PollTimeout = 10 * time.Millisecond
		c.Relay.PickupTimeout = 20 * time.Millisecond
		c.Relay.InactiveBackendTimeout = 50 * time.Millisecond
	})
	e.poll("brief")
	deadline := ctxT(t)
	for {
		r := e.do("GET", "/client/brief/", nil)
		if r.status == 503 {
			break
		}
		if deadline.Err() != nil {
			t.Fatalf("still known: %d", r.status)
		}
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestShutdownDrainsOpenStreams(t *testing.T) {
	e := start(t, nil)
	polled := e.pollAsync("drain", 1)
	parked := e.pollAsync("drain", 2)
	req, _ := http.NewRequest("GET", e.node.URL+"/client/drain/", nil)
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := e.c.Do(req)
		if err != nil {
			t.Error(err)
		}
		respc <- resp
	}()
	// Either poll may take the request: a poll counts as parked a moment
	// before it waits, so the second can be waiting first.
	var got *wire.Request
	select {
	case got = <-polled:
	case got = <-parked:
		parked = polled
	}
	if got == nil {
		t.Fatal("a poll ended without the user's request")
	}
	id := got.ID
	e.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("before;")})
	resp := <-respc
	if resp == nil {
		t.FailNow()
	}
	defer resp.Body.Close()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- e.node.Shutdown(ctx)
	}()
	// While draining, new user requests are refused (asked of a name
	// without a relay client, so that no poll can take them before the
	// drain begins) and the open stream goes on: its relay client can
	// still post.
	for {
		r := e.do("GET", "/client/elsewhere/", nil)
		if r.status == 503 && r.body == "server is shutting down" {
			break
		}
		if r.err != nil || r.status != 503 {
			t.Fatalf("%d %q %v", r.status, r.body, r.err)
		}
	}
	e.want(e.post(&wire.Response{HasID: true, ID: id, Body: []byte("after"), EOF: true}), 200, "ok")
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "before;after" {
		t.Fatalf("drained stream %q %v", b, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if req := <-parked; req != nil {
		t.Fatalf("a parked poll got a request at shutdown: %+v", req)
	}
}

// startRaw runs a node outside servertest, for shutdowns that are meant to
// fail.
func startRaw(t *testing.T, cfg node.Config) (*node.Node, string, <-chan error) {
	srv, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	return srv, "http://" + ln.Addr().String(), served
}

func TestShutdownCutsStreamsThatDoNotEnd(t *testing.T) {
	srv, base, served := startRaw(t, servertest.Config())
	e := &env{t: t, node: &servertest.Node{Node: srv, URL: base}, c: &http.Client{Transport: &http.Transport{}}}
	defer e.c.CloseIdleConnections()
	polled := e.pollAsync("stuck", 1)
	user := e.async("GET", "/client/stuck/", nil)
	id := (<-polled).ID
	e.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("never ends")})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "relays cut") {
		t.Fatalf("shutdown: %v", err)
	}
	if r := <-user; r.err == nil {
		t.Fatalf("a cut stream looked complete: %q", r.body)
	}
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

// TestTwoNodesShareBackends runs two nodes that share a node directory:
// the in-memory one of relaytest, and the Redis engine's on a real
// redis-server and a real Redis Cluster (skipped without them, failed
// under CI=true).
func TestTwoNodesShareBackends(t *testing.T) {
	t.Run("directory", func(t *testing.T) {
		dir := relaytest.NewDirectory()
		testTwoNodes(t, func(c *node.Config) { c.Directory = dir })
	})
	servertest.ForEachSharedEngine(t, func(t *testing.T, e servertest.Engine) {
		testTwoNodes(t, func(c *node.Config) { c.Store = e.Store })
	})
}

func testTwoNodes(t *testing.T, share func(*node.Config)) {
	// Polls end soon (b's poll for "far" below must be over), but not so
	// soon that the parked "spread" poll ends before the user's request,
	// forwarded from b, reaches it on a loaded machine.
	shared := func(c *node.Config) { share(c); c.Relay.PollTimeout = 500 * time.Millisecond }
	a, b := start(t, shared), start(t, shared)
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			typ, m, err := c.Read(r.Context())
			if err == nil {
				c.Write(r.Context(), typ, append([]byte("echo:"), m...))
			}
			c.Read(r.Context())
			return
		}
		fmt.Fprintf(w, "%s host=%s", r.URL.Path, r.Host)
	})
	// The relay client is connected to node a only.
	a.runClient("far", be, func(o *gcrclient.Options) { o.ChunkDelay = 2 * time.Millisecond })
	select {
	case <-a.node.RelayAnnounced("far"):
	case <-ctxT(t).Done():
		t.Fatal("never announced")
	}
	hostB := strings.TrimPrefix(b.node.URL, "http://")
	b.want(b.do("GET", "/client/far/x/y", nil), 200, "/x/y host="+hostB)
	// A websocket through node b.
	ctx := ctxT(t)
	c, _, err := websocket.Dial(ctx, b.node.URL+"/client/far/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := c.Read(ctx); err != nil || string(m) != "echo:hi" {
		t.Fatalf("%q %v", m, err)
	}
	c.Close(websocket.StatusNormalClosure, "")

	// A relay client whose calls a load balancer spreads: it polls node a
	// and posts its chunks to node b, which hands them to a.
	polled := a.pollAsync("spread", 1)
	<-a.node.RelayAnnounced("spread")
	user := b.async("GET", "/client/spread/", nil)
	preq := <-polled
	if preq == nil {
		t.Fatal("the parked poll ended without the request")
	}
	id := preq.ID
	b.want(b.post(&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("via b")}), 200, "ok")
	b.want(b.do("POST", "/server/requeststream?id="+id+"x", nil), 410, "No ongoing request with id "+id+"x\n")
	b.want(b.post(&wire.Response{HasID: true, ID: id, EOF: true}), 200, "ok")
	a.want(<-user, 200, "via b")
	b.want(b.post(&wire.Response{HasID: true, ID: id, EOF: true}), 400, "Duplicate or invalid request ID "+id+"\n")
	// Node b has seen a poll for "far" too, long over: its backend is known
	// but has no poll parked, so the request goes to a, where one is.
	if r, _ := b.poll("far"); r.status != 408 {
		t.Fatalf("poll on b: %d", r.status)
	}
	b.want(b.do("GET", "/client/far/again", nil), 200, "/again host="+hostB)
	// Unknown everywhere: 503 from b.
	if r := b.do("GET", "/client/nowhere/", nil); r.status != 503 || !strings.Contains(r.body, "unknown client") {
		t.Fatalf("%d %q", r.status, r.body)
	}
}

func TestShutdownWithAnOpenWebsocket(t *testing.T) {
	e := start(t, nil)
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
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
			c.Write(r.Context(), typ, b)
		}
	})
	e.runClient("wsdown", be, func(o *gcrclient.Options) { o.ChunkDelay = 2 * time.Millisecond; o.NumPendingRequests = 2 })
	ctx := ctxT(t)
	c, _, err := websocket.Dial(ctx, e.node.URL+"/client/wsdown/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := c.Read(ctx); err != nil || string(m) != "ping" {
		t.Fatalf("%q %v", m, err)
	}
	// An upgraded connection has no natural end: the drain cuts it and
	// returns without waiting for the deadline, and without a panic.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.node.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if sctx.Err() != nil {
		t.Fatal("the drain waited for the websocket until its deadline")
	}
	if _, _, err := c.Read(ctx); err == nil {
		t.Fatal("the websocket survived the shutdown")
	}
}
