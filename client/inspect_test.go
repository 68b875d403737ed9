package client_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

// inspected is a node with an agent whose exchanges an inspector records,
// served on a loopback address of its own.
type inspected struct {
	node      *servertest.Node
	host      string // the agent's Host, port included
	inspector string // base URL of the inspector
	hits      atomic.Int64
	lastBody  atomic.Value
}

func startInspected(t *testing.T, o client.InspectorOptions) *inspected {
	t.Helper()
	env := &inspected{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := env.hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		env.lastBody.Store(string(b))
		w.Header().Set("X-Hit", strings.Repeat("I", int(n)))
		if r.URL.Path == "/big" {
			io.WriteString(w, strings.Repeat("0123456789", 10))
			return
		}
		if r.URL.Path == "/binary" {
			w.Write([]byte{0xff, 0xfe, 0x00})
			return
		}
		io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+string(b))
	})}
	go local.Serve(ln)
	t.Cleanup(func() { local.Close() })

	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	env.node = servertest.Start(t, cfg)
	env.host = "shop.expose.test" + env.node.URL[strings.LastIndex(env.node.URL, ":"):]
	ins := client.NewInspector(o)
	t.Cleanup(ins.Close)
	iln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	isrv := &http.Server{Handler: ins}
	go isrv.Serve(iln)
	t.Cleanup(func() { isrv.Close() })
	env.inspector = "http://" + iln.Addr().String()
	c, err := client.New(env.node.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := startExpose(t, c, client.ExposeOptions{Name: "shop", Local: "http://" + ln.Addr().String(), Inspector: ins}); err != nil {
		t.Fatal(err)
	}
	return env
}

// user sends a request through postern to the agent.
func (env *inspected) user(t *testing.T, method, path, body string) {
	t.Helper()
	req, _ := http.NewRequest(method, env.node.URL+path, strings.NewReader(body))
	req.Host = env.host
	req.Header.Set("X-Test", "yes")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

type exchange struct {
	ID         string  `json:"id"`
	Method     string  `json:"method"`
	Path       string  `json:"path"`
	Host       string  `json:"host"`
	Status     int     `json:"status"`
	DurationMS float64 `json:"duration_ms"`
	ReplayOf   string  `json:"replay_of"`
	Request    part    `json:"request"`
	Response   part    `json:"response"`
}

type part struct {
	Headers       http.Header `json:"headers"`
	Body          string      `json:"body"`
	BodyEncoding  string      `json:"body_encoding"`
	BodySize      int64       `json:"body_size"`
	BodyTruncated bool        `json:"body_truncated"`
}

func (env *inspected) list(t *testing.T) []exchange {
	t.Helper()
	resp, err := http.Get(env.inspector + "/api/requests")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Requests []exchange }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /api/requests: %d %v", resp.StatusCode, err)
	}
	return out.Requests
}

// replay posts a replay of id with the headers given and returns the
// status and the body.
func (env *inspected) replay(t *testing.T, id string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", env.inspector+"/api/requests/"+id+"/replay", strings.NewReader("{}"))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestInspectorRecordsAndReplays: the inspector lists the exchanges the
// agent forwarded, newest first, with headers and bodies up to its cap in a
// bounded ring; a replay sends the same request to the local service
// again and is recorded; replays are refused to cross-site requests.
func TestInspectorRecordsAndReplays(t *testing.T) {
	env := startInspected(t, client.InspectorOptions{Requests: 4, BodyBytes: 32})
	env.user(t, "POST", "/orders?x=1", "hello")
	env.user(t, "GET", "/big", "")
	env.user(t, "GET", "/binary", "")
	list := env.list(t)
	if len(list) != 3 {
		t.Fatalf("%d exchanges, want 3", len(list))
	}
	bin, big, post := list[0], list[1], list[2]
	if post.Method != "POST" || post.Path != "/orders?x=1" || post.Host != env.host || post.Status != 200 || post.DurationMS <= 0 ||
		post.Request.Body != "hello" || post.Request.BodySize != 5 || post.Request.Headers.Get("X-Test") != "yes" ||
		post.Response.Body != "POST /orders?x=1 hello" || post.Response.Headers.Get("X-Hit") != "I" {
		t.Fatalf("the POST: %+v", post)
	}
	if big.Path != "/big" || !big.Response.BodyTruncated || big.Response.BodySize != 100 || big.Response.Body != strings.Repeat("0123456789", 4)[:32] {
		t.Fatalf("the big answer: %+v", big.Response)
	}
	if bin.Response.BodyEncoding != "base64" || bin.Response.Body != "//4A" {
		t.Fatalf("the binary answer: %+v", bin.Response)
	}
	if post.ID == big.ID || big.ID == bin.ID || post.ID == "" {
		t.Fatalf("ids %q %q %q", post.ID, big.ID, bin.ID)
	}

	// Replay: the same request reaches the local service again.
	code, body := env.replay(t, post.ID, "Content-Type", "application/json")
	var rep exchange
	if code != 200 || json.Unmarshal([]byte(body), &rep) != nil || rep.ReplayOf != post.ID || rep.Status != 200 ||
		rep.Response.Body != "POST /orders?x=1 hello" || rep.Response.Headers.Get("X-Hit") != "IIII" || env.lastBody.Load() != "hello" {
		t.Fatalf("replay: %d %s", code, body)
	}
	if l := env.list(t); l[0].ID != rep.ID || l[0].ReplayOf != post.ID {
		t.Fatalf("the replay is not listed first: %+v", l[0])
	}

	// Cross-site requests may not replay; others are told why.
	for _, c := range []struct {
		hdr  []string
		want int
	}{
		{[]string{"Content-Type", "text/plain"}, http.StatusForbidden},
		{[]string{"Content-Type", "application/x-www-form-urlencoded"}, http.StatusForbidden},
		{[]string{"Content-Type", "application/json", "Origin", "http://evil.example"}, http.StatusForbidden},
		{[]string{"Content-Type", "application/json", "Origin", "null"}, http.StatusForbidden},
	} {
		if code, body := env.replay(t, post.ID, c.hdr...); code != c.want || strings.Contains(body, "\n") {
			t.Errorf("replay with %v: %d %q", c.hdr, code, body)
		}
	}
	if code, _ := env.replay(t, post.ID, "Content-Type", "application/json", "Origin", env.inspector); code != 200 {
		t.Errorf("replay from the page's own origin: %d", code)
	}
	if code, body := env.replay(t, "999", "Content-Type", "application/json"); code != http.StatusNotFound || !strings.Contains(body, "keeps the last 4") {
		t.Errorf("unknown id: %d %q", code, body)
	}
	hits := env.hits.Load()
	// A request whose body was cut cannot be replayed.
	env.user(t, "PUT", "/upload", strings.Repeat("x", 40))
	if code, body := env.replay(t, env.list(t)[0].ID, "Content-Type", "application/json"); code != http.StatusConflict || !strings.Contains(body, "larger than the 32 bytes kept") {
		t.Errorf("replay of a cut body: %d %q", code, body)
	}
	if env.hits.Load() != hits+1 {
		t.Fatalf("refused replays reached the local service")
	}
	// The ring keeps the last four.
	if l := env.list(t); len(l) != 4 || l[0].Path != "/upload" {
		t.Fatalf("ring: %d exchanges, newest %q", len(l), l[0].Path)
	}

	// A name another site could point here is not answered (DNS rebinding).
	req, _ := http.NewRequest("GET", env.inspector+"/api/requests", nil)
	req.Host = "evil.example:4040"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("Host evil.example: %d", resp.StatusCode)
	}
}
