package client_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

// exposed is an in-process agent in front of a local service, behind a
// real node.
type exposed struct {
	node string // the node's base URL
	host string // the agent's public Host
	stop func() error
	user *http.Client
}

// expose starts a node and an agent for local; the agent stops at the
// end of the test unless stop was called.
func expose(t *testing.T, local string, log io.Writer) *exposed {
	t.Helper()
	if log == nil {
		log = io.Discard
	}
	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	n := servertest.Start(t, cfg)
	c, err := client.New(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.Expose(ctx, client.ExposeOptions{
			Name: "fwd", Local: local, Logger: slog.New(slog.NewTextHandler(log, nil)),
			OnReady: func(string) {
				select {
				case ready <- struct{}{}:
				default:
				}
			},
		})
	}()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() { cancel(); stopErr = <-done })
		return stopErr
	}
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := stop(); err != nil {
			t.Errorf("Expose: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Expose ended: %v", err)
	}
	return &exposed{node: n.URL, host: "fwd.expose.test" + n.URL[strings.LastIndex(n.URL, ":"):], stop: stop, user: &http.Client{Transport: tr}}
}

func (e *exposed) request(t *testing.T, method, path string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, e.node+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = e.host
	return req
}

// get sends a request and reads the whole answer.
func (e *exposed) do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := e.user.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", req.Method, req.URL.Path, err)
	}
	return resp.StatusCode, string(b)
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func serveLocal(t *testing.T, h http.Handler) string {
	t.Helper()
	ln := listen(t)
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestExposeLocalClosesBetweenRequests: a local service that closes its
// connection after every answer, without saying so (as one does whose
// keep-alive timeout passed), still answers every request: the agent
// notices the close and dials again.
func TestExposeLocalClosesBetweenRequests(t *testing.T) {
	ln := listen(t)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	conns := make(chan int, 100)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- i
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err == nil {
				b, _ := io.ReadAll(req.Body)
				msg := fmt.Sprintf("conn %d %s %d", i, req.URL.Path, len(b))
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
			}
			c.Close()
		}
	}()
	e := expose(t, "http://"+ln.Addr().String(), nil)
	for i := range 4 {
		code, body := e.do(t, e.request(t, "GET", fmt.Sprintf("/r%d", i), nil))
		if want := fmt.Sprintf("conn %d /r%d 0", i, i); code != 200 || body != want {
			t.Fatalf("request %d: %d %q, want %q", i, code, body, want)
		}
	}
}

// TestExposeConnectionClose: a local service that answers with
// Connection: close is redialed for the next request, and its answer
// arrives whole.
func TestExposeConnectionClose(t *testing.T) {
	var mu sync.Mutex
	remotes := map[string]bool{}
	local := serveLocal(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes[r.RemoteAddr] = true
		mu.Unlock()
		if r.Header.Get("Connection") != "" {
			t.Errorf("hop-by-hop Connection header reached the local service: %q", r.Header.Get("Connection"))
		}
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye "+r.URL.Path)
	}))
	e := expose(t, local, nil)
	for i := range 3 {
		req := e.request(t, "GET", fmt.Sprintf("/c%d", i), nil)
		resp, err := e.user.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("bye /c%d", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(remotes) != 3 {
		t.Fatalf("%d local connections for 3 answers with Connection: close", len(remotes))
	}
}

// TestExposeUpgrade: a websocket (101 Switching Protocols) through the
// agent echoes both ways, and plain requests keep working beside it.
func TestExposeUpgrade(t *testing.T) {
	local := serveLocal(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" {
			io.WriteString(w, "plain")
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(-1)
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if c.Write(r.Context(), typ, append([]byte("echo:"), b...)) != nil {
				return
			}
		}
	}))
	e := expose(t, local, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.node, "http")+"/ws", &websocket.DialOptions{Host: e.host})
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(-1)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, msg := range []string{"a", strings.Repeat("b", 70_000), "c"} {
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, b, err := ws.Read(ctx)
		if err != nil || string(b) != "echo:"+msg {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(b), err)
		}
		if code, body := e.do(t, e.request(t, "GET", "/", nil)); code != 200 || body != "plain" {
			t.Fatalf("plain request beside the websocket: %d %q", code, body)
		}
	}
	if err := ws.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// TestExposeStreamsAsItArrives: an answer the local service sends in
// parts reaches the user part by part, of unknown length (an event
// stream) or known.
func TestExposeStreamsAsItArrives(t *testing.T) {
	next := make(chan struct{})
	local := serveLocal(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/known" {
			w.Header().Set("Content-Length", "10")
		} else {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		rc := http.NewResponseController(w)
		for range 3 {
			io.WriteString(w, "part:")
			rc.Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
			if r.URL.Path == "/known" {
				io.WriteString(w, "done!")
				return
			}
		}
	}))
	e := expose(t, local, nil)
	for _, path := range []string{"/stream", "/known"} {
		resp, err := e.user.Do(e.request(t, "GET", path, nil))
		if err != nil {
			t.Fatal(err)
		}
		parts := 3
		if path == "/known" {
			parts = 1
		}
		buf := make([]byte, 5)
		for i := range parts {
			// The local service waits for next before it sends more: this
			// part must arrive on its own.
			if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "part:" {
				t.Fatalf("%s part %d: %q, %v", path, i, buf, err)
			}
			next <- struct{}{}
		}
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := map[string]string{"/stream": "", "/known": "done!"}[path]; err != nil || string(rest) != want {
			t.Fatalf("%s end: %q, %v", path, rest, err)
		}
	}
}

// TestExposeLocalUnreachable: the same 502 text as ever, every time.
func TestExposeLocalUnreachable(t *testing.T) {
	addr := refusedAddr(t)
	e := expose(t, "http://"+addr, nil)
	for range 2 {
		code, body := e.do(t, e.request(t, "POST", "/x", strings.NewReader("some body")))
		if want := "postern expose: the local service at " + addr + " cannot be reached: "; code != 502 || !strings.HasPrefix(body, want) {
			t.Fatalf("%d %q, want 502 %q...", code, body, want)
		}
	}
}

// TestExposeDrainsAtStop: a request in progress when the agent is told
// to stop gets its whole answer; Expose returns after it.
func TestExposeDrainsAtStop(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	local := serveLocal(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "finished "+r.URL.Path)
	}))
	var log syncBuffer
	e := expose(t, local, &log)
	// An idle stream beside the busy one must not hold up the stop.
	if code, _ := e.do(t, e.request(t, "GET", "/warm", nil)); code != 200 {
		t.Fatalf("warm-up: %d", code)
	}
	got := make(chan string, 1)
	go func() {
		resp, err := e.user.Do(e.request(t, "GET", "/slow", nil))
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- e.stop() }()
	log.waitFor(t, "expose: stopping")
	select {
	case err := <-stopped:
		t.Fatalf("Expose returned (%v) with a request in progress", err)
	default:
	}
	close(release)
	if s := <-got; s != "200 finished /slow" {
		t.Fatalf("answer during the drain: %q", s)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Expose: %v", err)
	}
	if !strings.Contains(log.String(), "msg=request method=GET host="+e.host+" path=/slow status=200 bytes=14 elapsed=") {
		t.Fatalf("no log line for the drained request:\n%s", log.String())
	}
}

// TestExposeLogsAndRewrites: one log line per request with the public
// host and the user's address; the local service sees the public Host
// and the forwarding headers, the query, and no hop-by-hop headers.
func TestExposeLogsAndRewrites(t *testing.T) {
	local := serveLocal(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %q xff=%s proto=%s ua=%q body=%d",
			r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"),
			r.Header.Get("User-Agent"), len(b))
	}))
	var log syncBuffer
	e := expose(t, local, &log)
	req := e.request(t, "POST", "/p/q?a=1&b=2", bytes.NewReader(make([]byte, 100_000)))
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("User-Agent", "tester")
	code, body := e.do(t, req)
	want := fmt.Sprintf(`POST %s /p/q "a=1&b=2" xff=127.0.0.1 proto=http ua="tester" body=100000`, e.host)
	if code != 200 || body != want {
		t.Fatalf("%d %q\nwant %q", code, body, want)
	}
	// No User-Agent stays none (Request.Write would add Go's).
	noUA := e.request(t, "GET", "/u", nil)
	noUA.Header["User-Agent"] = []string{""}
	if code, body := e.do(t, noUA); code != 200 || !strings.Contains(body, `ua="" body=0`) {
		t.Fatalf("no User-Agent: %d %q", code, body)
	}
	head := e.request(t, "HEAD", "/h", nil)
	if code, body := e.do(t, head); code != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", code, body)
	}
	// The log line is written before the answer's end reaches the user,
	// but after the local service's: stop the agent to be sure of it.
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		fmt.Sprintf("msg=request method=POST host=%s path=/p/q status=200 bytes=%d elapsed=", e.host, len(want)),
		fmt.Sprintf("msg=request method=HEAD host=%s path=/h status=200 bytes=0 elapsed=", e.host),
	} {
		if !strings.Contains(log.String(), line) {
			t.Fatalf("no log line %q in\n%s", line, log.String())
		}
	}
	if !strings.Contains(log.String(), "client=127.0.0.1") {
		t.Fatalf("no client address in the log:\n%s", log.String())
	}
}

// syncBuffer is a log that tests can wait on.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{}, 1)
	}
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return s.b.Write(p)
}

// waitFor returns once the log holds sub.
func (s *syncBuffer) waitFor(t *testing.T, sub string) {
	t.Helper()
	s.mu.Lock()
	if s.changed == nil {
		s.changed = make(chan struct{}, 1)
	}
	changed := s.changed
	s.mu.Unlock()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(s.String(), sub) {
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the log never said %q:\n%s", sub, s.String())
		}
	}
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestExposeIdleLocalConnectionChecked: a request with a body, which
// cannot be sent twice, goes out only on a local connection that is
// still good: one the local service closed after its answer, or on which
// it sent bytes nobody asked for, is dropped before the request is
// written to it, and the request is sent on a new one.
func TestExposeIdleLocalConnectionChecked(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after func(c net.Conn) // after the answer
	}{
		{"closed", func(c net.Conn) { c.Close() }},
		{"unasked bytes", func(c net.Conn) { io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var open []net.Conn
			t.Cleanup(func() {
				ln.Close()
				mu.Lock()
				for _, c := range open {
					c.Close()
				}
				mu.Unlock()
				wg.Wait()
			})
			settled := make(chan struct{}, 1) // tc.after ran
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					mu.Lock()
					open = append(open, c)
					mu.Unlock()
					req, err := http.ReadRequest(bufio.NewReader(c))
					if err != nil {
						continue
					}
					b, _ := io.ReadAll(req.Body)
					msg := fmt.Sprintf("conn %d %s", i, b)
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
					tc.after(c)
					settled <- struct{}{}
				}
			}()
			e := expose(t, "http://"+ln.Addr().String(), nil)
			for i := range 3 {
				body := fmt.Sprintf("body %d", i)
				code, got := e.do(t, e.request(t, "POST", "/", strings.NewReader(body)))
				if want := fmt.Sprintf("conn %d %s", i, body); code != 200 || got != want {
					t.Fatalf("request %d: %d %q, want %q", i, code, got, want)
				}
				<-settled
			}
		})
	}
}

// TestExposePlainRequestsReachTheServiceAsRewritten: a request without a
// body that needs no rewriting goes to the local service as the server
// sent it, and a plain answer comes back as the service sent it; the
// service gets the bytes the agent's rewriting writes and the user the
// same answer (compared with an agent whose inspector makes it rewrite
// every exchange).
func TestExposePlainRequestsReachTheServiceAsRewritten(t *testing.T) {
	ln := listen(t)
	var mu sync.Mutex
	heads := map[string]string{} // by the request's X-Case
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var head strings.Builder
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						head.WriteString(line)
						if line == "\r\n" {
							break
						}
					}
					h := head.String()
					i := strings.Index(h, "X-Case: ")
					mu.Lock()
					heads[h[i:i+strings.Index(h[i:], "\r\n")]+" "+strings.Fields(h)[0]] += h
					mu.Unlock()
					answer := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Answer: a\r\nX-Answer: b\r\ncontent-type: text/x-mine\r\n\r\n"
					if !strings.HasPrefix(h, "HEAD ") {
						answer += "ok"
					}
					io.WriteString(c, answer)
				}
			})
		}
	})
	t.Cleanup(func() { ln.Close() })
	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	n := servertest.Start(t, cfg)
	c, _ := client.New(n.URL)
	ins := client.NewInspector(client.InspectorOptions{})
	t.Cleanup(ins.Close)
	local := "http://" + ln.Addr().String()
	if err := startExpose(t, c, client.ExposeOptions{Name: "plain", Local: local}); err != nil {
		t.Fatal(err)
	}
	if err := startExpose(t, c, client.ExposeOptions{Name: "insp", Local: local, Inspector: ins}); err != nil {
		t.Fatal(err)
	}
	port := n.URL[strings.LastIndex(n.URL, ":"):]
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	cases := []struct{ method, target string }{
		{"GET", "/"},
		{"GET", "/a%2Fb/%C3%A4?x=1&y=%20&z"},
		{"HEAD", "/h?q"},
		{"OPTIONS", "/o"},
		{"GET", "/semi?a=1;b=2"},
	}
	for i, tc := range cases {
		var answers []string
		for _, name := range []string{"plain", "insp"} {
			req, _ := http.NewRequest(tc.method, n.URL+tc.target, nil)
			req.Host = name + ".expose.test" + port
			req.Header.Set("X-Case", strconv.Itoa(i))
			req.Header["X-Multi"] = []string{"one", "two"}
			req.Header["User-Agent"] = []string{""}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s %s via %s: %d", tc.method, tc.target, name, resp.StatusCode)
			}
			resp.Header.Del("Date")
			answers = append(answers, fmt.Sprintf("%d %v %d %q", resp.StatusCode, resp.Header, resp.ContentLength, b))
		}
		if answers[0] != answers[1] {
			t.Fatalf("%s %s: the user got\n%s\nfrom the plain agent and\n%s\nfrom the rewriting one", tc.method, tc.target, answers[0], answers[1])
		}
		mu.Lock()
		var got []string
		for k, h := range heads {
			if strings.HasPrefix(k, "X-Case: "+strconv.Itoa(i)+" ") {
				got = append(got, h)
			}
		}
		mu.Unlock()
		if len(got) != 1 {
			t.Fatalf("%s %s: %d kinds of heads", tc.method, tc.target, len(got))
		}
		plain, rewritten, ok := strings.Cut(strings.ReplaceAll(got[0], "insp.", "plain."), "\r\n\r\n")
		if !ok || plain+"\r\n\r\n" != rewritten {
			t.Fatalf("%s %s: the service got\n%q\nfrom the plain agent and\n%q\nfrom the rewriting one", tc.method, tc.target, plain, rewritten)
		}
	}
}
