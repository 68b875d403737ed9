package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/store/redisstore/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }

// build compiles postern once for the test.
func build(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "postern")
	out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

var listenRE = regexp.MustCompile(`postern (?:\S+ )?listening(?: on https?://|"? addr=)(\S+)`)

// proc is a running `postern serve` child process.
type proc struct {
	cmd    *exec.Cmd
	URL    string
	exited chan struct{}
	mu     sync.Mutex
	logs   strings.Builder
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// serve starts `postern serve` on a kernel-chosen port and returns once it
// logged that it listens (by then it is registered in the node directory).
func serve(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	return start(t, exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...))
}

// start runs cmd, a `postern serve` on a kernel-chosen port, as serve does.
func start(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
				listening <- "http://" + m[1]
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
		close(p.exited)
	}()
	select {
	case p.URL = <-listening:
	case <-p.exited:
		t.Fatalf("postern serve exited at start: %s", p.log())
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-p.exited
		t.Fatalf("postern serve did not start: %s", p.log())
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and waits for a graceful exit.
func (p *proc) stop(t *testing.T) int {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		t.Errorf("postern serve did not drain in time: %s", p.log())
	}
	return p.cmd.ProcessState.ExitCode()
}

type node struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
}

func liveNodes(t *testing.T, c *http.Client, base string) (node, []node) {
	t.Helper()
	res, err := c.Get(base + "/ops/nodes")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out struct {
		Self  node   `json:"self"`
		Nodes []node `json:"nodes"`
	}
	if res.StatusCode != 200 || json.NewDecoder(res.Body).Decode(&out) != nil {
		t.Fatalf("/ops/nodes: %d", res.StatusCode)
	}
	return out.Self, out.Nodes
}

// waitLongPolls waits until base reports n parked tunnel long-polls. A child
// process offers no readiness channel, so this polls its metrics.
func waitLongPolls(t *testing.T, c *http.Client, base string, n int) {
	t.Helper()
	want := fmt.Sprintf(`postern_queue_waiters{kind="t"} %d`, n)
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := c.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never reported %q", base, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTwoNodesOnOneRedis runs two `postern serve` processes on one Redis: a
// produce on one node wakes a long-poll parked on the other at once (the
// poll's own timeout is 30 s), both list each other in the node directory,
// and a node that stops leaves it.
func TestTwoNodesOnOneRedis(t *testing.T) {
	url := redistest.URL(t)
	bin := build(t)
	secret := []string{"--cluster-secret", "multinode-test-secret-0123456789"}
	a := serve(t, bin, append([]string{"--store", url, "--node-id", "node-a", "--node-ttl", "3s"}, secret...)...)
	b := serve(t, bin, append([]string{"--store", url, "--node-id", "node-b", "--node-ttl", "3s"}, secret...)...)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 40 * time.Second}

	self, nodes := liveNodes(t, c, a.URL)
	if self.ID != "node-a" || self.Addr != a.URL {
		t.Fatalf("self = %+v, want node-a at %s", self, a.URL)
	}
	if fmt.Sprint(nodes) != fmt.Sprint([]node{{"node-a", a.URL}, {"node-b", b.URL}}) {
		t.Fatalf("live nodes = %v", nodes)
	}

	for i, pair := range [][2]*proc{{a, b}, {b, a}, {a, b}} {
		producer, poller := pair[0], pair[1]
		type got struct {
			status int
			body   string
			id     string
			at     time.Time
		}
		done := make(chan got, 1)
		go func() {
			res, err := c.Get(poller.URL + "/t/demo/poll?timeout=30")
			if err != nil {
				done <- got{status: -1, body: err.Error()}
				return
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			done <- got{res.StatusCode, string(body), res.Header.Get("X-Message-Id"), time.Now()}
		}()
		waitLongPolls(t, c, poller.URL, 1)
		msg := fmt.Sprint("hello ", i)
		res, err := c.Post(producer.URL+"/t/demo", "text/plain", strings.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		sent := time.Now()
		if res.StatusCode != 201 {
			t.Fatalf("produce: %d", res.StatusCode)
		}
		g := <-done
		if g.status != 200 || g.body != msg || g.id != res.Header.Get("X-Message-Id") {
			t.Fatalf("long-poll on the other node: %d %q id %q, want 200 %q id %q", g.status, g.body, g.id, msg, res.Header.Get("X-Message-Id"))
		}
		lag := g.at.Sub(sent)
		t.Logf("produce on %s woke the long-poll on %s after %v", producer.URL, poller.URL, lag)
		if lag > 10*time.Second {
			t.Fatalf("the long-poll was not woken across nodes (answered after %v)", lag)
		}
	}

	if code := b.stop(t); code != 0 {
		t.Fatalf("node b exit code %d: %s", code, b.log())
	}
	if _, nodes = liveNodes(t, c, a.URL); fmt.Sprint(nodes) != fmt.Sprint([]node{{"node-a", a.URL}}) {
		t.Fatalf("live nodes after node-b stopped = %v", nodes)
	}
}
