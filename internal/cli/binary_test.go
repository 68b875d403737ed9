package cli_test

// The command line as a user meets it: the real postern binary, run as a
// process against real servers (in-process nodes that can restart on the
// same address and data directory, or `postern serve` itself).

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// binDir holds the binary built for the tests (made by TestMain).
var binDir string

var (
	buildOnce sync.Once
	buildErr  error
)

// postern returns the path of the postern binary, built once.
func postern(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "postern")
	buildOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		out, err := exec.Command(goBin, "build", "-o", bin, "../../cmd/postern").CombinedOutput()
		if err != nil {
			buildErr = err
			t.Logf("go build: %s", out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building postern: %v", buildErr)
	}
	return bin
}

// cleanEnv is the test process's environment without postern's own
// variables, plus extra ("K=V").
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POSTERN_") && !strings.HasPrefix(kv, "TUNNEL_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

type result struct {
	code           int
	stdout, stderr string
}

// runBin runs the binary to its end (60 s at most).
func runBin(t *testing.T, env []string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postern(t), args...)
	cmd.Env = cleanEnv(env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Run()
	return result{cmd.ProcessState.ExitCode(), out.String(), errb.String()}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader, which can
// wait for what is written.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	written chan struct{} // closed and replaced at each write
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.written != nil {
		close(s.written)
		s.written = nil
	}
	return s.b.Write(p)
}

// waitFor waits until cond holds for what was written, for 30 s at most
// and not after done is closed; it reports whether cond held.
func (s *syncBuffer) waitFor(done <-chan struct{}, cond func(string) bool) bool {
	deadline := time.After(30 * time.Second)
	for {
		s.mu.Lock()
		text := s.b.String()
		if s.written == nil {
			s.written = make(chan struct{})
		}
		written := s.written
		s.mu.Unlock()
		if cond(text) {
			return true
		}
		select {
		case <-written:
		case <-done:
			return cond(s.String())
		case <-deadline:
			return false
		}
	}
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a running postern command whose standard output is read line by
// line.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuffer
	exited chan struct{}
}

func startBin(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(postern(t), args...), env)
}

// startCmd starts cmd with the environment env added to the test's,
// postern's variables removed (see startBin).
func startCmd(t *testing.T, cmd *exec.Cmd, env []string) *proc {
	t.Helper()
	cmd.Env = cleanEnv(env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, lines: make(chan string, 1000), stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// line returns the next line of standard output.
func (p *proc) line() string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("%v exited (%v); stderr: %s", p.cmd.Args[1:], p.cmd.ProcessState, p.stderr)
		}
		return l
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%v printed nothing within 30 s; stderr: %s", p.cmd.Args[1:], p.stderr)
	}
	return ""
}

// stop sends sig, waits for the exit and returns the exit code and the
// lines printed but not read.
func (p *proc) stop(sig os.Signal) (int, []string) {
	p.t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%v did not stop on %v; stderr: %s", p.cmd.Args[1:], sig, p.stderr)
	}
	var rest []string
	for l := range p.lines {
		rest = append(rest, l)
	}
	return p.cmd.ProcessState.ExitCode(), rest
}

// testNode is an in-process postern server on a fixed address that can stop
// and start again there, on the same data directory: a restart as the
// clients see it.
type testNode struct {
	t      *testing.T
	cfg    node.Config
	addr   string
	URL    string
	srv    *node.Node
	served chan error
}

func startNode(t *testing.T, mutate func(*node.Config)) *testNode {
	t.Helper()
	cfg := servertest.Config()
	cfg.Store = "file:" + t.TempDir()
	if mutate != nil {
		mutate(&cfg)
	}
	n := &testNode{t: t, cfg: cfg, addr: "127.0.0.1:0"}
	n.start()
	t.Cleanup(n.stop)
	return n
}

func (n *testNode) start() {
	n.t.Helper()
	srv, err := node.New(n.cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", n.addr)
	if err != nil {
		srv.Shutdown(context.Background())
		n.t.Fatal(err)
	}
	n.addr, n.URL, n.srv = ln.Addr().String(), "http://"+ln.Addr().String(), srv
	n.served = make(chan error, 1)
	go func() { n.served <- srv.Serve(ln) }()
}

func (n *testNode) stop() {
	if n.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.srv.Shutdown(ctx); err != nil {
		n.t.Errorf("shutdown: %v", err)
	}
	<-n.served
	n.srv = nil
	http.DefaultClient.CloseIdleConnections()
}

func (n *testNode) waitLongPolls(count int) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.srv.WaitForLongPolls(ctx, count); err != nil {
		n.t.Fatalf("waiting for %d long-polls: %v", count, err)
	}
}

func (n *testNode) waitSubscribers(channel string, count int) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.srv.WaitForSubscribers(ctx, channel, count); err != nil {
		n.t.Fatalf("waiting for %d subscribers of %s: %v", count, channel, err)
	}
}

// post sends body to url and fails the test unless the answer is want.
func post(t *testing.T, url, body string, want int, hdr ...string) http.Header {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != want {
		t.Fatalf("POST %s: %d %s, want %d", url, res.StatusCode, b, want)
	}
	return res.Header
}
