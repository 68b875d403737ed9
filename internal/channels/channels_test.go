package channels_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/channels"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }

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
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &env{t: t, node: n, c: &http.Client{Transport: tr}}
}

type resp struct {
	status int
	body   string
	h      http.Header
}

// do sends a request; hdr is name, value pairs. path is sent as given
// (already escaped).
func (e *env) do(method, path, body string, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.node.URL+path, rd)
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
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, string(b), res.Header}
}

func (e *env) want(r resp, status int, body string) {
	e.t.Helper()
	if r.status != status || r.body != body {
		e.t.Fatalf("got %d %q, want %d %q", r.status, r.body, status, body)
	}
}

func (e *env) post(path, body string) {
	e.t.Helper()
	e.want(e.do("POST", path, body), 200, "OK\n")
}

// dial opens a websocket to path (relative to the node) and waits until
// the node counts the subscription on channel.
func (e *env) dial(path, channel string, hdr ...string) *websocket.Conn {
	e.t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.node.URL, "http")+path, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		e.t.Fatalf("dial %s: %v (status %d)", path, err, status)
	}
	c.SetReadLimit(1 << 20)
	e.t.Cleanup(func() { c.CloseNow() })
	return c
}

// sub dials channel path under /c and waits until it is subscribed, given
// the number of subscribers the channel will then have.
func (e *env) sub(channel string, count int, query string) *websocket.Conn {
	e.t.Helper()
	c := e.dial("/c"+channel+query, channel)
	e.node.WaitForSubscribers(e.t, channel, count)
	return c
}

func read(t testing.TB, c *websocket.Conn) (websocket.MessageType, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, string(b)
}

func readText(t testing.TB, c *websocket.Conn) string {
	t.Helper()
	typ, s := read(t, c)
	if typ != websocket.MessageText {
		t.Fatalf("got a %v frame %q, want text", typ, s)
	}
	return s
}

// closeCode reads until the connection ends and returns its close status.
func closeCode(t testing.TB, c *websocket.Conn) websocket.StatusCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal("connection not closed")
			}
			return websocket.CloseStatus(err)
		}
	}
}

func write(t testing.TB, c *websocket.Conn, typ websocket.MessageType, s string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, []byte(s)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func TestPageServed(t *testing.T) {
	e := start(t, nil)
	r := e.do("GET", "/c/hello/world", "")
	if r.status != 200 || !strings.HasPrefix(r.h.Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d %v", r.status, r.h)
	}
	for _, want := range []string{"<title>/hello/world", "new WebSocket(", "location.pathname", `ws.send("")`} {
		if !strings.Contains(r.body, want) {
			t.Fatalf("page lacks %q", want)
		}
	}
	// Self-contained: nothing loaded from elsewhere.
	for _, bad := range []string{"src=", "href=", "http://", "https://", "//cdn"} {
		if strings.Contains(r.body, bad) {
			t.Fatalf("page refers to an outside resource (%q)", bad)
		}
	}
	if csp := r.h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Fatalf("CSP %q", csp)
	}
	// The channel "/" itself.
	if r := e.do("GET", "/c/", ""); r.status != 200 || !strings.Contains(r.body, "<h1>/</h1>") {
		t.Fatalf("page of /: %d", r.status)
	}
}

func TestPageEscapesPath(t *testing.T) {
	e := start(t, nil)
	r := e.do("GET", "/c/%3Cscript%3Ealert(%22xss%22)%3C/script%3E", "")
	if r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	if strings.Contains(r.body, `<script>alert(`) {
		t.Fatal("path not escaped in the page")
	}
	if !strings.Contains(r.body, "&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;") {
		t.Fatalf("escaped path missing from the page")
	}
}

func TestBadOriginsRefused(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Channels.Origins = []string{"https://example.com"} })
	ws := func(origin string) int {
		t.Helper()
		r := e.do("GET", "/c/o", "", "Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13",
			"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==", "Origin", origin)
		return r.status
	}
	// The original's two cases: another host, and another scheme.
	for _, bad := range []string{"https://evil.example", "http://example.com", "null", "https://example.com.evil", "https://example.com:8443"} {
		if st := ws(bad); st != http.StatusForbidden {
			t.Fatalf("origin %q: status %d, want 403", bad, st)
		}
		e.want(e.do("POST", "/c/o", "x", "Origin", bad), 403, "Error: forbidden. Origin not allowed.\n")
		if r := e.do("GET", "/c/o", "", "Accept", "text/event-stream", "Origin", bad); r.status != 403 {
			t.Fatalf("event stream with origin %q: %d", bad, r.status)
		}
	}
	// Case-insensitive, default port normalised; no Origin at all is fine.
	for _, good := range []string{"https://example.com", "HTTPS://Example.COM", "https://example.com:443", ""} {
		h := []string{}
		if good != "" {
			h = []string{"Origin", good}
		}
		c := e.dial("/c/o", "/o", h...)
		e.node.WaitForSubscribers(t, "/o", 1)
		e.want(e.do("POST", "/c/o", "hi", h...), 200, "OK\n")
		if got := readText(t, c); got != "hi" {
			t.Fatalf("got %q", got)
		}
		c.Close(websocket.StatusNormalClosure, "")
		e.node.WaitForSubscribers(t, "/o", 0)
	}
}

func TestClientsEachReceiveEveryMessage(t *testing.T) {
	for _, n := range []int{1, 10, 100, 1000} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			e := start(t, nil)
			const msgs = 5
			conns := make([]*websocket.Conn, n)
			for i := range conns {
				conns[i] = e.dial("/c/many", "/many")
			}
			e.node.WaitForSubscribers(t, "/many", n)
			for i := range msgs - 1 {
				e.post("/c/many", "post "+strconv.Itoa(i))
			}
			write(t, conns[0], websocket.MessageText, "from a client")
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i, c := range conns {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					for j := range msgs {
						want := "post " + strconv.Itoa(j)
						if j == msgs-1 {
							want = "from a client"
						}
						_, b, err := c.Read(ctx)
						if err != nil || string(b) != want {
							errs <- fmt.Errorf("client %d message %d: %q %v, want %q", i, j, b, err, want)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		})
	}
}

func TestPaths(t *testing.T) {
	e := start(t, nil)
	long := strings.Repeat("é", 255) // 255 runes, 510 bytes
	e.post("/c/"+long, "x")
	e.want(e.do("POST", "/c/"+long+"a", "x"), 400, "Error: bad request. Path length must be 1-256 Unicode characters (UTF-8).\n")
	e.want(e.do("GET", "/c/"+long+"a", ""), 400, "Error: bad request. Path length must be 1-256 Unicode characters (UTF-8).\n")
	for _, p := range []string{"/c/%FF", "/c/a%C3", "/c/%ED%A0%80"} {
		e.want(e.do("GET", p, ""), 400, "Error: bad request. Path must be valid Unicode (UTF-8).\n")
		e.want(e.do("POST", p, "x"), 400, "Error: bad request. Path must be valid Unicode (UTF-8).\n")
	}
	// %2F counts as '/', and the query string is not part of the name.
	// (Paths not in canonical form are redirected: see TestRedirects.)
	c := e.sub("/a/b", 1, "?ignored=1")
	e.post("/c/a%2Fb", "slash")
	if got := readText(t, c); got != "slash" {
		t.Fatalf("got %q", got)
	}
	for _, p := range []string{"/", "/a/", "/x.y/..z"} {
		c := e.sub(p, 1, "")
		r := e.do("POST", "/c"+p, "to "+p)
		e.want(r, 200, "OK\n")
		if got := readText(t, c); got != "to "+p {
			t.Fatalf("%s: got %q", p, got)
		}
	}
	// Without the trailing slash of the mount point nothing matches.
	e.want(e.do("GET", "/c", ""), 404, "not found")
}

func TestPost(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Channels.MaxPostBytes = 100 })
	c := e.sub("/p", 1, "")
	// An empty body is accepted and delivered to nobody.
	e.post("/c/p", "")
	e.post("/c/p", "first")
	if got := readText(t, c); got != "first" {
		t.Fatalf("got %q", got)
	}
	// Posting to a channel nobody listens to is fine too.
	e.post("/c/nobody", "lost")
	e.want(e.do("POST", "/c/p", strings.Repeat("x", 101)), 413, "Error: request entity too large.\n")
	// Without Content-Length (chunked) the limit holds as well.
	req, _ := http.NewRequest("POST", e.node.URL+"/c/p", io.MultiReader(strings.NewReader(strings.Repeat("y", 150))))
	req.ContentLength = -1
	res, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 413 {
		t.Fatalf("chunked oversize: %d", res.StatusCode)
	}
	e.post("/c/p", strings.Repeat("z", 100))
	if got := readText(t, c); got != strings.Repeat("z", 100) {
		t.Fatalf("got %q", got)
	}
	e.want(e.do("POST", "/c/p", "\xff\xfe"), 400, "Error: bad request. Message must be valid Unicode (UTF-8).\n")
}

func TestMethods(t *testing.T) {
	e := start(t, nil)
	for _, m := range []string{"HEAD", "PUT", "OPTIONS", "DELETE", "PATCH"} {
		r := e.do(m, "/c/x", "")
		if r.status != 405 || !strings.Contains(r.h.Get("Allow"), "POST") {
			t.Fatalf("%s: %d %v", m, r.status, r.h)
		}
	}
}

func TestUpgradeHeaders(t *testing.T) {
	e := start(t, nil)
	// Upgrade headers without a websocket handshake: a clear 4xx, no crash.
	r := e.do("GET", "/c/u", "", "Connection", "keep-alive, Upgrade", "Upgrade", "WebSocket")
	if r.status != 400 && r.status != 426 {
		t.Fatalf("incomplete handshake: %d %q", r.status, r.body)
	}
	r = e.do("POST", "/c/u", "x", "Connection", "upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if r.status != 405 {
		t.Fatalf("POST upgrade: %d", r.status)
	}
	// Another protocol's upgrade is a plain GET: the page.
	if r := e.do("GET", "/c/u", "", "Connection", "Upgrade", "Upgrade", "h2c"); r.status != 200 || !strings.Contains(r.body, "WebSocket") {
		t.Fatalf("h2c upgrade: %d", r.status)
	}
	// A subprotocol offered by the client is not echoed back.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.node.URL, "http")+"/c/u", &websocket.DialOptions{Subprotocols: []string{"chat"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if p := res.Header.Get("Sec-WebSocket-Protocol"); p != "" {
		t.Fatalf("subprotocol echoed: %q", p)
	}
}

func TestWebsocketPublish(t *testing.T) {
	e := start(t, nil)
	a := e.sub("/w", 1, "")
	b := e.sub("/w", 2, "")
	// The sender receives its own message too.
	write(t, a, websocket.MessageText, "hello")
	for _, c := range []*websocket.Conn{a, b} {
		if got := readText(t, c); got != "hello" {
			t.Fatalf("got %q", got)
		}
	}
	// Binary frames keep their type.
	write(t, b, websocket.MessageBinary, "\x00\xff")
	for _, c := range []*websocket.Conn{a, b} {
		if typ, got := read(t, c); typ != websocket.MessageBinary || got != "\x00\xff" {
			t.Fatalf("got %v %q", typ, got)
		}
	}
	// An empty message goes back to its sender only.
	write(t, a, websocket.MessageText, "")
	if got := readText(t, a); got != "" {
		t.Fatalf("keep-alive answer %q", got)
	}
	e.post("/c/w", "next")
	if got := readText(t, b); got != "next" {
		t.Fatalf("b got %q (the empty message must not reach it)", got)
	}
	if got := readText(t, a); got != "next" {
		t.Fatalf("a got %q", got)
	}
	// Invalid UTF-8 in a text frame closes the sender with 1007.
	write(t, a, websocket.MessageText, "\xff")
	if code := closeCode(t, a); code != websocket.StatusInvalidFramePayloadData {
		t.Fatalf("close %v, want 1007", code)
	}
	e.node.WaitForSubscribers(t, "/w", 1)
}

func TestWebsocketSizeLimit(t *testing.T) {
	e := start(t, nil)
	c := e.sub("/big", 1, "")
	write(t, c, websocket.MessageText, strings.Repeat("a", 64<<10))
	if got := readText(t, c); len(got) != 64<<10 {
		t.Fatalf("got %d bytes", len(got))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.Write(ctx, websocket.MessageText, []byte(strings.Repeat("a", 64<<10+1)))
	if code := closeCode(t, c); code != websocket.StatusMessageTooBig {
		t.Fatalf("close %v, want 1009", code)
	}
}

func TestBroadcastOnly(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Channels.BroadcastOnly = []string{"/news/"} })
	c := e.sub("/news/today", 1, "")
	e.post("/c/news/today", "headline")
	if got := readText(t, c); got != "headline" {
		t.Fatalf("got %q", got)
	}
	write(t, c, websocket.MessageText, "") // keep-alives still work
	if got := readText(t, c); got != "" {
		t.Fatalf("got %q", got)
	}
	write(t, c, websocket.MessageText, "reader reply")
	if code := closeCode(t, c); code != websocket.StatusPolicyViolation {
		t.Fatalf("close %v, want 1008", code)
	}
	// Other channels are not affected.
	o := e.sub("/chat", 1, "")
	write(t, o, websocket.MessageText, "talk")
	if got := readText(t, o); got != "talk" {
		t.Fatalf("got %q", got)
	}
}

func metric(t *testing.T, n *servertest.Node, name string) float64 {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return total
}

func TestSlowSubscriberDropped(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Broker.QueueLen = 8 })
	slow := e.sub("/s", 1, "")
	fast := e.sub("/s", 2, "")
	big := strings.Repeat("m", 60<<10)
	var got sync.WaitGroup
	received := 0
	stop := make(chan struct{})
	got.Go(func() {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			_, b, err := fast.Read(ctx)
			cancel()
			if err != nil {
				t.Errorf("fast subscriber: %v", err)
				return
			}
			if string(b) == "done" {
				return
			}
			received++
			select {
			case <-stop:
			default:
			}
		}
	})
	sent := 0
	for metric(t, e.node, "postern_broker_slow_dropped_total") == 0 {
		if sent > 5000 {
			t.Fatal("slow subscriber never dropped")
		}
		e.post("/c/s", big)
		sent++
	}
	e.post("/c/s", "done")
	got.Wait()
	if received != sent {
		t.Fatalf("fast subscriber got %d of %d", received, sent)
	}
	// The slow one gets what was on the wire, then a close with 1008.
	if code := closeCode(t, slow); code != websocket.StatusPolicyViolation {
		t.Fatalf("close %v, want 1008", code)
	}
	if v := metric(t, e.node, "postern_channels_closed_total"); v < 1 {
		t.Fatalf("closed_total %v", v)
	}
}

type frame struct {
	ID     string `json:"id"`
	Data   string `json:"data"`
	Binary bool   `json:"binary"`
	Gap    bool   `json:"gap"`
}

func readFrame(t *testing.T, c *websocket.Conn) frame {
	t.Helper()
	s := readText(t, c)
	var f frame
	if err := json.Unmarshal([]byte(s), &f); err != nil {
		t.Fatalf("frame %q: %v", s, err)
	}
	return f
}

func TestResumeWithSince(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Broker.HistoryLen = 3 })
	c := e.sub("/r", 1, "?since=now")
	e.post("/c/r", "one")
	f := readFrame(t, c)
	if f.Data != "one" || f.ID == "" || f.Gap {
		t.Fatalf("frame %+v", f)
	}
	c.Close(websocket.StatusNormalClosure, "")
	e.node.WaitForSubscribers(t, "/r", 0)
	e.post("/c/r", "two")
	e.post("/c/r", "three")
	// Coming back with the last id seen: the missed ones, then live.
	c = e.sub("/r", 1, "?since="+f.ID)
	for _, want := range []string{"two", "three"} {
		if g := readFrame(t, c); g.Data != want || g.Gap {
			t.Fatalf("got %+v, want %q", g, want)
		}
	}
	e.post("/c/r", "four")
	if g := readFrame(t, c); g.Data != "four" {
		t.Fatalf("got %+v", g)
	}
	// A cursor older than the history keeps: a gap frame first.
	e.post("/c/r", "five") // trims "two"
	readFrame(t, c)
	g := e.sub("/r", 2, "?since="+f.ID)
	if first := readFrame(t, g); !first.Gap {
		t.Fatalf("first frame %+v, want a gap", first)
	}
	for _, want := range []string{"three", "four", "five"} {
		if m := readFrame(t, g); m.Data != want {
			t.Fatalf("got %+v, want %q", m, want)
		}
	}
	// Binary messages travel base64-encoded in the envelope.
	write(t, g, websocket.MessageBinary, "\x01\x02")
	for _, cc := range []*websocket.Conn{c, g} {
		if m := readFrame(t, cc); !m.Binary || m.Data != "AQI=" {
			t.Fatalf("binary frame %+v", m)
		}
	}
	e.want(e.do("GET", "/c/r?since=yesterday", "", "Connection", "Upgrade", "Upgrade", "websocket",
		"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), 400,
		"Error: bad request. since must be a message id (<ms>-<seq>), 0 or now.\n")
}

// events opens an event stream and returns a reader of its lines.
func (e *env) events(path string, hdr ...string) (*bufio.Reader, func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.node.URL+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.c.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		cancel()
		e.t.Fatalf("event stream: %d %v", res.StatusCode, res.Header)
	}
	stop := func() { cancel(); res.Body.Close() }
	e.t.Cleanup(stop)
	return bufio.NewReader(res.Body), stop
}

// event reads one event (up to its blank line), skipping comments.
func event(t *testing.T, br *bufio.Reader) []string {
	t.Helper()
	var lines []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event stream ended: %v (so far %q)", err, lines)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if len(lines) > 0 {
				return lines
			}
			continue
		}
		if !strings.HasPrefix(line, ":") {
			lines = append(lines, line)
		}
	}
}

func TestEventStream(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Broker.HistoryLen = 2 })
	br, stop := e.events("/c/sse")
	if ev := event(t, br); ev[0] != "retry: 3000" {
		t.Fatalf("first event %q", ev)
	}
	e.node.WaitForSubscribers(t, "/sse", 1)
	e.post("/c/sse", "line 1\nline 2\r\nline 3")
	ev := event(t, br)
	if len(ev) != 4 || !strings.HasPrefix(ev[0], "id: ") || ev[1] != "data: line 1" || ev[2] != "data: line 2" || ev[3] != "data: line 3" {
		t.Fatalf("event %q", ev)
	}
	firstID := strings.TrimPrefix(ev[0], "id: ")
	ws := e.sub("/sse", 2, "")
	write(t, ws, websocket.MessageBinary, "\xff")
	if ev := event(t, br); len(ev) != 3 || ev[1] != "event: binary" || ev[2] != "data: /w==" {
		t.Fatalf("binary event %q", ev)
	}
	stop()
	e.node.WaitForSubscribers(t, "/sse", 1)
	e.post("/c/sse", "missed")
	// Resume with Last-Event-ID, as EventSource does on reconnect.
	br, _ = e.events("/c/sse", "Last-Event-ID", firstID)
	event(t, br) // retry
	for _, want := range []string{"event: binary", "data: missed"} {
		ev := event(t, br)
		if !strings.Contains(strings.Join(ev, "\n"), want) {
			t.Fatalf("resumed event %q lacks %q", ev, want)
		}
	}
	// A cursor beyond what is kept (history of 2): a gap event first.
	br, _ = e.events("/c/sse?since=" + firstID + "&x")
	event(t, br)
	e.post("/c/sse", "x") // trims the first entry after the cursor
	br, _ = e.events("/c/sse?since=" + firstID)
	event(t, br)
	if ev := event(t, br); ev[0] != "event: gap" {
		t.Fatalf("want a gap event, got %q", ev)
	}
	e.want(e.do("GET", "/c/sse", "", "Accept", "text/event-stream", "Last-Event-ID", "nope"), 400,
		"Error: bad request. since must be a message id (<ms>-<seq>), 0 or now.\n")
}

// TestEventStreamsShareOneEvent: a message to several event streams and
// websockets on a channel is one event, made once, that every stream
// gets whole (and the websockets their own frames of it).
func TestEventStreamsShareOneEvent(t *testing.T) {
	e := start(t, nil)
	var streams []*bufio.Reader
	for i := range 3 {
		br, _ := e.events("/c/share")
		event(t, br) // retry
		e.node.WaitForSubscribers(t, "/share", i+1)
		streams = append(streams, br)
	}
	ws := e.sub("/share", 4, "")
	env := e.sub("/share", 5, "?since=now")
	for _, msg := range []string{"one", "two\nlines", "three"} {
		e.post("/c/share", msg)
		var first []string
		for i, br := range streams {
			ev := event(t, br)
			if i == 0 {
				first = ev
				if n := len(ev); n < 2 || !strings.HasPrefix(ev[0], "id: ") || ev[n-1] != "data: "+msg[strings.LastIndex(msg, "\n")+1:] {
					t.Fatalf("event %q for %q", ev, msg)
				}
			} else if !slices.Equal(ev, first) {
				t.Fatalf("stream %d got %q, stream 0 %q", i, ev, first)
			}
		}
		if got := readText(t, ws); got != msg {
			t.Fatalf("websocket got %q, want %q", got, msg)
		}
		if f := readFrame(t, env); f.Data != msg || "id: "+f.ID != first[0] {
			t.Fatalf("envelope %+v, event %q", f, first)
		}
	}
}

func TestShutdownClosesSubscribers(t *testing.T) {
	cfg := servertest.Config()
	n := servertest.Start(t, cfg)
	e := &env{t: t, node: n, c: &http.Client{Transport: &http.Transport{}}}
	c := e.sub("/bye", 1, "")
	br, _ := e.events("/c/bye")
	event(t, br)
	e.node.WaitForSubscribers(t, "/bye", 2)
	done := make(chan error, 1)
	go func() { done <- n.Shutdown(context.Background()) }()
	if code := closeCode(t, c); code != websocket.StatusGoingAway {
		t.Fatalf("close %v, want 1001", code)
	}
	if ev := event(t, br); ev[0] != "event: end" || ev[1] != "data: server shutting down" {
		t.Fatalf("event %q", ev)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestAtRoot(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Channels.AtRoot = true })
	// Ops and tunnels keep priority.
	e.want(e.do("GET", "/healthz", ""), 200, "ok")
	e.want(e.do("GET", "/health", ""), 200, "OK")
	if r := e.do("POST", "/t/demo", "x"); r.status != 201 {
		t.Fatalf("tunnel produce at root mode: %d", r.status)
	}
	// Everything else is a channel, "/" included.
	if r := e.do("GET", "/", ""); r.status != 200 || !strings.Contains(r.body, "<h1>/</h1>") {
		t.Fatalf("GET /: %d", r.status)
	}
	c := e.dial("/room", "/room")
	e.node.WaitForSubscribers(t, "/room", 1)
	e.post("/room", "at root")
	if got := readText(t, c); got != "at root" {
		t.Fatalf("got %q", got)
	}
	if r := e.do("GET", "/c/x", ""); !strings.Contains(r.body, "<h1>/c/x</h1>") { // just a channel here
		t.Fatalf("GET /c/x: %d", r.status)
	}
}

// TestChurnWhilePosting is defect 1 of the original: websockets connecting
// and disconnecting on a path while others POST to it crashed the process.
func TestChurnWhilePosting(t *testing.T) {
	e := start(t, nil)
	stable := e.sub("/churn", 1, "")
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
				c, _, err := websocket.Dial(dctx, "ws"+strings.TrimPrefix(e.node.URL, "http")+"/c/churn", nil)
				dcancel()
				if err != nil {
					continue
				}
				c.CloseNow()
			}
		})
	}
	var posts sync.WaitGroup
	const each = 100
	for range 4 {
		posts.Go(func() {
			for i := range each {
				req, _ := http.NewRequest("POST", e.node.URL+"/c/churn", strings.NewReader("m"+strconv.Itoa(i)))
				res, err := e.c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		})
	}
	for range 4 * each {
		readText(t, stable)
	}
	posts.Wait()
	cancel()
	wg.Wait()
	e.node.WaitForSubscribers(t, "/churn", 1)
	e.post("/c/churn", "still alive")
	if got := readText(t, stable); got != "still alive" {
		t.Fatalf("got %q", got)
	}
}

// TestWritersNeverLoseAWakeup publishes to many subscribers with writers
// that let go almost at once, so that messages keep landing while writers
// exit and restart: every subscriber must get every message, in order.
func TestWritersNeverLoseAWakeup(t *testing.T) {
	// Restored after the server's shutdown (cleanups run last first).
	t.Cleanup(channels.SetWriterLinger(50 * time.Microsecond))
	e := start(t, nil)
	const subs, msgs = 50, 200
	conns := make([]*websocket.Conn, subs)
	for i := range conns {
		conns[i] = e.dial("/c/wake", "/wake")
	}
	e.node.WaitForSubscribers(t, "/wake", subs)
	var wg sync.WaitGroup
	errs := make(chan error, subs)
	for i, c := range conns {
		wg.Go(func() {
			for j := range msgs {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, b, err := c.Read(ctx)
				cancel()
				if err != nil || string(b) != strconv.Itoa(j) {
					errs <- fmt.Errorf("subscriber %d message %d: %q %v", i, j, b, err)
					return
				}
			}
		})
	}
	for j := range msgs {
		e.post("/c/wake", strconv.Itoa(j))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestFloodingPublisherIsCutOff: a websocket client that publishes as fast
// as it can and never reads is also a subscriber of its channel (the sender
// gets its own messages), so its queue fills and it is closed with 1008;
// a subscriber that keeps up stays connected and memory stays bounded.
func TestFloodingPublisherIsCutOff(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Broker.QueueLen = 64 })
	reader := e.sub("/flood", 1, "")
	flooder := e.sub("/flood", 2, "")
	got := make(chan int, 1)
	go func() {
		n := 0
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			_, b, err := reader.Read(ctx)
			cancel()
			if err != nil || string(b) == "stop" {
				got <- n
				return
			}
			n++
		}
	}()
	msg := strings.Repeat("f", 32<<10)
	sent := 0
	for ; sent < 20000; sent++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := flooder.Write(ctx, websocket.MessageText, []byte(msg))
		cancel()
		if err != nil {
			break // the server cut it off
		}
		if sent%64 == 0 && metric(t, e.node, "postern_broker_slow_dropped_total") > 0 {
			break
		}
	}
	if metric(t, e.node, "postern_broker_slow_dropped_total") == 0 {
		t.Fatalf("flooder not dropped after %d messages", sent)
	}
	if code := closeCode(t, flooder); code != websocket.StatusPolicyViolation {
		t.Fatalf("flooder closed with %v, want 1008", code)
	}
	e.node.WaitForSubscribers(t, "/flood", 1)
	e.post("/c/flood", "stop")
	if n := <-got; n == 0 {
		t.Fatal("the reader got nothing")
	}
}

func TestScopedTokens(t *testing.T) {
	policy, err := auth.Parse([]byte(`
[[token]]
name = "publisher"
secret = "publisher-secret-0123"
[[token.grant]]
actions = ["read", "write"]
paths = ["/c/public/*", "/c/private"]

[[anonymous.grant]]
actions = ["read"]
paths = ["/c/public/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, func(c *node.Config) { c.Policy = policy })
	bearer := []string{"Authorization", "Bearer publisher-secret-0123"}
	// Anyone may listen on /public/..., only the token may publish.
	c := e.sub("/public/news", 1, "")
	r := e.do("POST", "/c/public/news", "x")
	if r.status != 403 || !strings.Contains(r.body, `no token was given: to publish to "/public/news", a token granted write on /c/public/news is needed`) {
		t.Fatalf("anonymous POST: %d %q", r.status, r.body)
	}
	e.want(e.do("POST", "/c/public/news", "from the token", bearer...), 200, "OK\n")
	if got := readText(t, c); got != "from the token" {
		t.Fatalf("got %q", got)
	}
	// An anonymous websocket may listen but not publish.
	write(t, c, websocket.MessageText, "anonymous")
	if code := closeCode(t, c); code != websocket.StatusPolicyViolation {
		t.Fatalf("close %v, want 1008", code)
	}
	// /private needs the token to subscribe, as a header or (browsers)
	// as ?access_token=.
	if r := e.do("GET", "/c/private", "", "Accept", "text/event-stream"); r.status != 403 || !strings.Contains(r.body, "to subscribe to \"/private\", a token granted read on /c/private is needed") {
		t.Fatalf("anonymous subscribe: %d %q", r.status, r.body)
	}
	p := e.dial("/c/private?access_token=publisher-secret-0123", "/private")
	e.node.WaitForSubscribers(t, "/private", 1)
	write(t, p, websocket.MessageText, "token may publish")
	if got := readText(t, p); got != "token may publish" {
		t.Fatalf("got %q", got)
	}
}

// TestPingPong: the server pings; a client that answers stays, one that
// does not is closed once the pong timeout passes.
func TestPingPong(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Channels.PingInterval = 20 * time.Millisecond
		// The live client's reader must answer every ping within this,
		// also on a loaded machine (the race detector, 2 shared cores).
		c.Channels.PongTimeout = time.Second
	})
	live := e.sub("/pp", 1, "")
	msgs := make(chan string, 1)
	go func() { // reading makes coder/websocket answer pings
		defer close(msgs)
		for {
			_, b, err := live.Read(context.Background())
			if err != nil {
				return
			}
			msgs <- string(b)
		}
	}()
	// A raw client that reads nothing (so never answers pings).
	rawWebsocket(t, e.node.Addr, "/c/pp")
	e.node.WaitForSubscribers(t, "/pp", 2)
	// The deaf client is dropped after its pong timeout; by then the live
	// one went through several ping rounds, and it still gets messages.
	e.node.WaitForSubscribers(t, "/pp", 1)
	e.post("/c/pp", "still here")
	if got := <-msgs; got != "still here" {
		t.Fatalf("live client got %q", got)
	}
	if v := metric(t, e.node, "postern_channels_closed_total"); v != 1 {
		t.Fatalf("closed_total %v, want 1 (pong timeout)", v)
	}
}

// TestWriteDeadline: a subscriber that stops reading while its queue still
// has room is cut off by the write deadline, not kept forever.
func TestWriteDeadline(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Broker.QueueLen = 100000 // the queue never fills: the deadline must act
		c.Channels.WriteTimeout = 100 * time.Millisecond
	})
	stuck := e.sub("/wd", 1, "")
	big := strings.Repeat("w", 60<<10)
	for i := 0; metric(t, e.node, "postern_channels_closed_total") == 0; i++ {
		if i > 5000 {
			t.Fatal("write deadline never closed the stuck subscriber")
		}
		e.post("/c/wd", big)
	}
	e.node.WaitForSubscribers(t, "/wd", 0)
	if code := closeCode(t, stuck); code != -1 {
		t.Fatalf("close %v, want an abrupt close (-1)", code)
	}
}

// TestWritersLetGo: once messages stop, websocket writers exit, so an
// idle subscriber holds no writer goroutine; a new message starts one.
func TestWritersLetGo(t *testing.T) {
	t.Cleanup(channels.SetWriterLinger(20 * time.Millisecond))
	letGo := make(chan struct{}, 16)
	t.Cleanup(channels.OnWriterLetGo(func() { letGo <- struct{}{} }))
	e := start(t, nil)
	c := e.sub("/lg", 1, "")
	for _, msg := range []string{"one", "two"} {
		e.post("/c/lg", msg)
		if got := readText(t, c); got != msg {
			t.Fatalf("got %q", got)
		}
		select {
		case <-letGo:
		case <-time.After(10 * time.Second):
			t.Fatal("writer still running 10 s after the last message")
		}
	}
}

// TestSlowPostTimesOut: a POST whose body trickles in is answered 408 once
// the body read timeout passes and its connection is closed; it neither
// holds the connection for ever (a slow-loris) nor publishes a part.
func TestSlowPostTimesOut(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Channels.BodyReadTimeout = 200 * time.Millisecond })
	sub := e.sub("/slow", 1, "")
	conn, err := net.Dial("tcp", e.node.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /c/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 408 || string(body) != "request body not received in time\n" {
		t.Fatalf("slow POST: %d %q", res.StatusCode, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection not closed after the timeout: %v", err)
	}
	// Nothing of it was published: the next message is the next POST.
	e.post("/c/slow", "whole")
	if got := readText(t, sub); got != "whole" {
		t.Fatalf("got %q", got)
	}
}

// TestEvictedSubscriberSendingAnEmptyFrame is defect 3 of the original: a
// slow subscriber that was evicted and then sent an empty frame (the page's
// keep-alive) made its handler panic. Here it gets its 1008 close and the
// node goes on serving the channel.
func TestEvictedSubscriberSendingAnEmptyFrame(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Broker.QueueLen = 4 })
	slow := e.sub("/ev", 1, "")
	big := strings.Repeat("m", 60<<10)
	for sent := 0; metric(t, e.node, "postern_broker_slow_dropped_total") == 0; sent++ {
		if sent > 5000 {
			t.Fatal("slow subscriber never dropped")
		}
		e.post("/c/ev", big)
	}
	// Evicted, not yet reading: its keep-alive goes out all the same.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	slow.Write(ctx, websocket.MessageText, nil)
	if code := closeCode(t, slow); code != websocket.StatusPolicyViolation {
		t.Fatalf("close %v, want 1008", code)
	}
	e.node.WaitForSubscribers(t, "/ev", 0)
	c := e.sub("/ev", 1, "")
	write(t, c, websocket.MessageText, "")
	if got := readText(t, c); got != "" {
		t.Fatalf("keep-alive answer %q", got)
	}
	e.post("/c/ev", "still here")
	if got := readText(t, c); got != "still here" {
		t.Fatalf("got %q", got)
	}
}

func TestCORS(t *testing.T) {
	e := start(t, nil)
	const app = "http://app.example:3000"
	r := e.do("POST", "/c/cors", "hi", "Origin", app)
	if r.status != 200 || r.h.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("publish from another origin: %d %v", r.status, r.h)
	}
	// Errors are readable too, so a page can show them.
	r = e.do("POST", "/c/cors", "\xff", "Origin", app)
	if r.status != 400 || r.h.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("error to another origin: %d %v", r.status, r.h)
	}
	r = e.do("OPTIONS", "/c/cors", "", "Origin", app, "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization")
	if r.status != 204 || !strings.Contains(r.h.Get("Access-Control-Allow-Methods"), "POST") ||
		!strings.Contains(r.h.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("preflight: %d %v", r.status, r.h)
	}
	// A request without Origin gets no CORS headers; a plain OPTIONS keeps 405 (TestMethods).
	if r := e.do("POST", "/c/cors", "hi"); r.h.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("no Origin: %v", r.h)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.node.URL+"/c/cors", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Origin", app)
	res, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("event stream to another origin: %d %v", res.StatusCode, res.Header)
	}
}

func TestCORSWithOrigins(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Channels.Origins = []string{"https://example.com"} })
	r := e.do("POST", "/c/cors", "hi", "Origin", "https://example.com")
	if r.status != 200 || r.h.Get("Access-Control-Allow-Origin") != "https://example.com" || r.h.Get("Vary") != "Origin" {
		t.Fatalf("listed origin: %d %v", r.status, r.h)
	}
	r = e.do("POST", "/c/cors", "hi", "Origin", "https://evil.example")
	if r.status != 403 || r.h.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("other origin: %d %v", r.status, r.h)
	}
	r = e.do("OPTIONS", "/c/cors", "", "Origin", "https://evil.example", "Access-Control-Request-Method", "POST")
	if r.status != 405 {
		t.Fatalf("preflight of an origin not listed: %d %v", r.status, r.h)
	}
}
