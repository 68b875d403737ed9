package chaos_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/chaos"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// bin is the postern binary the tests run, built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postern-chaos-")
	if err == nil {
		bin, err = chaos.Build(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// lease is the nodes' delivery lease in these tests: short, so that the
// drains that wait it out are.
const lease = 2 * time.Second

func startNode(t *testing.T, args ...string) *chaos.Node {
	t.Helper()
	n, err := chaos.StartNode(bin, append([]string{"--delivery-lease", lease.String()}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of %s:\n%s", n.URL, n.Log())
		}
		n.Stop()
	})
	return n
}

// rounds runs the rounds of faults, each a round of its own, and checks
// every report.
func rounds(t *testing.T, opts chaos.Options, faults map[string]func() error) chaos.Report {
	t.Helper()
	var total chaos.Report
	for name, fault := range faults {
		r, err := chaos.Round(context.Background(), name, opts, fault)
		if err != nil {
			t.Fatalf("round %s: %v", name, err)
		}
		t.Logf("round %s: %v", name, r)
		if !r.OK() {
			t.Errorf("round %s broke a guarantee: %v", name, r.Problems)
		}
		total.Add(r)
	}
	return total
}

// TestRedisStalledAndKilled: two nodes on one Redis (append-only, fsync
// always) under mixed load while Redis is paused (SIGSTOP for less and
// for more than the lease) and killed and restarted.
func TestRedisStalledAndKilled(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AppendOnly: true, AppendFsync: "always"})
	url := fmt.Sprintf("redis://%s/0?prefix=chaos:&write_timeout=1s", srv.Addr)
	var nodes []string
	for range 2 {
		n := startNode(t, "--store", url, "--cluster-secret", "chaos-test-secret-0123456789abcdef")
		nodes = append(nodes, n.URL)
	}
	pause := func(d time.Duration) func() error {
		return func() error { return chaos.Pause(srv, d) }
	}
	total := rounds(t, chaos.Options{Nodes: nodes, Lease: lease, Abort: true}, map[string]func() error{
		"redis-paused-short": pause(lease / 2),
		"redis-paused-long":  pause(2 * lease),
		"redis-killed":       func() error { srv.Crash(); return srv.Relaunch() },
	})
	t.Log(total)
}

// TestFileNodeKilled: one node on the file engine, killed (SIGKILL) under
// mixed load and started again on its data.
func TestFileNodeKilled(t *testing.T) {
	n := startNode(t, "--store", "file:"+filepath.Join(t.TempDir(), "data"))
	kill := func() error {
		if err := n.Kill(); err != nil {
			return err
		}
		return n.Restart()
	}
	total := rounds(t, chaos.Options{Nodes: []string{n.URL}, Lease: lease, Abort: true}, map[string]func() error{
		"file-killed-1": kill,
		"file-killed-2": kill,
	})
	t.Log(total)
}

// TestMemoryConsumersGoAway: the memory engine under the same load, with
// consumers giving up requests in the middle: nothing is lost, and without
// a failure of the node nothing comes twice.
func TestMemoryConsumersGoAway(t *testing.T) {
	n := startNode(t, "--store", "memory")
	total := rounds(t, chaos.Options{Nodes: []string{n.URL}, Lease: lease, Abort: true}, map[string]func() error{
		"memory-aborts": nil,
	})
	if total.Redelivered != 0 || total.MailRepeated != 0 {
		t.Errorf("repeats without a failure of the node: %v", total)
	}
}
