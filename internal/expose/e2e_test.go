package expose_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The end-to-end tests run the real binary: `postern serve` and `postern
// expose` as child processes, a backend HTTP server in the test.

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binary builds cmd/postern once per test run.
func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the postern binary")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "postern-e2e-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, "postern"), "../../cmd/postern").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "postern")
}

// proc is a running child process whose stderr lines the test can wait on.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	more  chan struct{} // closed and replaced on every new line
	done  chan struct{} // closed when the process exited
	err   error
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(os.Environ(), "POSTERN_LOG_LEVEL=info")
	stderr, _ := cmd.StderrPipe()
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, more: make(chan struct{}), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.more)
			p.more = make(chan struct{})
			p.mu.Unlock()
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s logs:\n%s", args[0], strings.Join(p.snapshot(), "\n"))
		}
	})
	return p
}

func (p *proc) snapshot() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// wait returns the submatches of the first line from index from on that
// matches re, failing after 20 seconds or when the process exits.
func (p *proc) wait(re *regexp.Regexp, from int) ([]string, int) {
	p.t.Helper()
	deadline := time.After(20 * time.Second)
	for i := from; ; {
		p.mu.Lock()
		lines, more := p.lines, p.more
		p.mu.Unlock()
		for ; i < len(lines); i++ {
			if m := re.FindStringSubmatch(lines[i]); m != nil {
				return m, i + 1
			}
		}
		select {
		case <-more:
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before logging %s:\n%s", p.cmd.Args[1], p.err, re, strings.Join(p.snapshot(), "\n"))
		case <-deadline:
			p.t.Fatalf("%s did not log %s within 20s:\n%s", p.cmd.Args[1], re, strings.Join(p.snapshot(), "\n"))
		}
	}
}

func (p *proc) stop(sig os.Signal) error {
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.t.Fatalf("%s did not exit within 20s of %v", p.cmd.Args[1], sig)
	}
	return p.err
}

// peakRSS is the process's high-water resident set in bytes.
func (p *proc) peakRSS() int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}

var (
	listenLine = regexp.MustCompile(`postern (?:\S+ )?listening(?: on https?://|"? addr=)(\S+)`)
	readyLine  = regexp.MustCompile(`expose: ready"? url=(\S+)`)
)

// backend is the service the agents expose.
func backend(t *testing.T, tag string) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s, host %s, client %s", tag, r.Host, r.Header.Get("X-Forwarded-For"))
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		io.Copy(w, io.LimitReader(zeros{}, n))
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
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
			if c.Write(r.Context(), typ, append([]byte(tag+":"), b...)) != nil {
				return
			}
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// viaHost sends a request to the server with Host name.localhost.
func viaHost(t *testing.T, hc *http.Client, server, name, method, path string, body io.Reader) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, server+path, body)
	req.Host = name + ".localhost" + server[strings.LastIndex(server, ":"):]
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitAgents polls /metrics until n native agents are registered.
func waitAgents(t *testing.T, server string, n int) {
	t.Helper()
	want := fmt.Sprintf(`postern_expose_agents{transport="native"} %d`, n)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(server + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %s", want)
		}
		time.Sleep(20 * time.Millisecond) // polling a readiness endpoint, with a deadline
	}
}

func TestExposeEndToEnd(t *testing.T) {
	srv := start(t, "serve", "--listen", "127.0.0.1:0", "--expose-domain", "localhost", "--store", "memory")
	m, _ := srv.wait(listenLine, 0)
	server := "http://" + m[1]
	local := backend(t, "one")
	agent := start(t, "expose", "--server", server, "--name", "demo", local)
	m, _ = agent.wait(readyLine, 0)
	port := server[strings.LastIndex(server, ":"):]
	if m[1] != "http://demo.localhost"+port {
		t.Fatalf("public URL %q", m[1])
	}
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer hc.CloseIdleConnections()

	// Plain requests by Host (case and port do not matter), keep-alive.
	for range 3 {
		code, body := viaHost(t, hc, server, "DeMo", "GET", "/hello", nil)
		if code != 200 || !strings.HasPrefix(body, "hello from one, host DeMo.localhost") || !strings.Contains(body, "client 127.0.0.1") {
			t.Fatalf("GET /hello: %d %q", code, body)
		}
	}
	agent.wait(regexp.MustCompile(`msg=request .*path=/hello status=200`), 0)
	// The path route reaches it too.
	resp, err := hc.Get(server + "/proxy/request/demo/hello")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("path route: %v %v", resp, err)
	}
	resp.Body.Close()

	// A websocket echo through the agent.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(server, "http")+"/ws", &websocket.DialOptions{Host: "demo.localhost" + port})
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	ws.SetReadLimit(-1)
	for _, msg := range []string{"ping", strings.Repeat("z", 100_000)} {
		ws.Write(ctx, websocket.MessageBinary, []byte(msg))
		_, b, err := ws.Read(ctx)
		if err != nil || string(b) != "one:"+msg {
			t.Fatalf("echo: %v %d bytes", err, len(b))
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")

	// 100 MB up and down, streamed: neither process holds it.
	const size = 100 << 20
	h := sha256.New()
	io.Copy(h, io.LimitReader(zeros{}, size))
	code, body := viaHost(t, hc, server, "demo", "POST", "/upload", io.LimitReader(zeros{}, size))
	if want := fmt.Sprintf("%d %x", size, h.Sum(nil)); code != 200 || body != want {
		t.Fatalf("upload: %d %q, want %q", code, body, want)
	}
	req, _ := http.NewRequest("GET", server+"/download?n="+strconv.Itoa(size), nil)
	req.Host = "demo.localhost" + port
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	for _, p := range []*proc{srv, agent} {
		rss := p.peakRSS()
		t.Logf("%s peak RSS %d MB", p.cmd.Args[1], rss>>20)
		if rss < 0 || rss > 80<<20 {
			t.Fatalf("%s peak RSS %d MB after moving 200 MB", p.cmd.Args[1], rss>>20)
		}
	}

	// The agent dies: a clear 502; a new agent restores the service.
	agent.cmd.Process.Kill()
	<-agent.done
	waitAgents(t, server, 0)
	if code, body := viaHost(t, hc, server, "demo", "GET", "/hello", nil); code != 502 || !strings.Contains(body, `no agent is connected as "demo"`) {
		t.Fatalf("agent gone: %d %q", code, body)
	}
	agent = start(t, "expose", "--server", server, "--name", "demo", local)
	agent.wait(readyLine, 0)
	if code, body := viaHost(t, hc, server, "demo", "GET", "/hello", nil); code != 200 || !strings.HasPrefix(body, "hello from one") {
		t.Fatalf("after restart: %d %q", code, body)
	}

	// A second agent with the same name shares the work.
	second := start(t, "expose", "--server", server, "--name", "demo", backend(t, "two"))
	second.wait(readyLine, 0)
	waitAgents(t, server, 2)
	seen := map[string]int{}
	for range 40 {
		code, body := viaHost(t, hc, server, "demo", "GET", "/hello", nil)
		if code != 200 {
			t.Fatalf("shared: %d %q", code, body)
		}
		seen[strings.Fields(body)[2]]++
	}
	if seen["one,"] == 0 || seen["two,"] == 0 {
		t.Fatalf("requests by backend %v: want both agents used", seen)
	}
	// SIGTERM: the agent exits 0; the other one keeps serving.
	if err := agent.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit on SIGTERM: %v", err)
	}
	waitAgents(t, server, 1)
	for range 5 {
		if code, body := viaHost(t, hc, server, "demo", "GET", "/hello", nil); code != 200 || !strings.HasPrefix(body, "hello from two") {
			t.Fatalf("after one left: %d %q", code, body)
		}
	}
	hc.CloseIdleConnections()
	if err := srv.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("serve exit on SIGTERM: %v", err)
	}
	// The server went away: the remaining agent keeps trying to reconnect.
	second.wait(regexp.MustCompile(`reconnecting`), 0)
}
