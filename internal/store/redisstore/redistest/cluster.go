package redistest

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Defaults of ClusterOptions.
const (
	DefaultMasters = 3
	// DefaultNodeTimeout is the cluster's --cluster-node-timeout: how long
	// a master may be unreachable before its replica takes over. A replica
	// is promoted about one to two node timeouts after its master died.
	DefaultNodeTimeout = 2 * time.Second
	// ClusterTimeout bounds forming a cluster and each wait for it to be
	// healthy.
	ClusterTimeout = 30 * time.Second
)

// ClusterOptions configure a Redis Cluster.
type ClusterOptions struct {
	// Masters is the number of masters (at least 3, Redis' minimum);
	// zero means DefaultMasters. Each master gets one replica.
	Masters int
	// NodeTimeout is --cluster-node-timeout; zero means DefaultNodeTimeout.
	NodeTimeout time.Duration
	// AppendOnly and AppendFsync are as in Options, for every node.
	AppendOnly  bool
	AppendFsync string
}

// Cluster is a running Redis Cluster of private redis-server processes
// on 127.0.0.1: masters, each with one replica (which takes over when its
// master dies: --cluster-replica-validity-factor 0 lets it always try).
type Cluster struct {
	// Nodes are every node, in the order they were started.
	Nodes []*Server
}

// NeedCluster skips t when redis-server or redis-cli is not installed, or
// fails it under CI=true.
func NeedCluster(t testing.TB) {
	t.Helper()
	need(t, Program, "redis-server")
	need(t, CLIProgram, "redis-tools")
}

// StartCluster starts a cluster for t, stopped by t.Cleanup. It returns
// once every slot is served and every replica is in sync with its master.
func StartCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	NeedCluster(t)
	c, err := LaunchCluster(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// LaunchCluster starts a cluster with its files in dir, for programs that
// are not tests. Close stops it.
func LaunchCluster(dir string, opts ClusterOptions) (*Cluster, error) {
	for _, p := range []string{Program, CLIProgram} {
		if _, err := exec.LookPath(p); err != nil {
			return nil, fmt.Errorf("%s is not installed", p)
		}
	}
	if opts.Masters == 0 {
		opts.Masters = DefaultMasters
	}
	if opts.Masters < 3 {
		return nil, fmt.Errorf("a Redis Cluster needs 3 masters or more, not %d", opts.Masters)
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = DefaultNodeTimeout
	}
	n := opts.Masters * 2
	c := &Cluster{Nodes: make([]*Server, n)}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			d := filepath.Join(dir, fmt.Sprint("node", i))
			if errs[i] = os.MkdirAll(d, 0o700); errs[i] != nil {
				return
			}
			c.Nodes[i], errs[i] = start(d, Options{
				member:      true,
				AppendOnly:  opts.AppendOnly,
				AppendFsync: opts.AppendFsync,
				Args: []string{
					"--cluster-node-timeout", strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
					"--cluster-replica-validity-factor", "0",
				},
			})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	args := []string{"--cluster", "create"}
	for _, s := range c.Nodes {
		args = append(args, s.Addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	out, err := exec.Command(CLIProgram, args...).CombinedOutput()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("redis-cli --cluster create: %v: %s", err, lastLines(string(out), 5))
	}
	if err := c.WaitHealthy(ClusterTimeout); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Close kills every node and waits for them to exit.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, s := range c.Nodes {
		if s != nil {
			wg.Go(s.Close)
		}
	}
	wg.Wait()
}

// URL returns a redis:// URL naming the masters (the client discovers
// the rest from any one that answers), with a key prefix no other call
// returned.
//
// The replicas are left out because a Cluster client connects to the
// addresses it is given, finds the replicas serve no slots, and closes
// those connections only five seconds later, from a goroutine that
// goleak would report.
func (c *Cluster) URL() string {
	var masters []string
	for _, s := range c.live() {
		if role, _ := s.Info("replication", "role"); role == "master" {
			masters = append(masters, s.Addr)
		}
	}
	if len(masters) == 0 { // nothing answers: the client will say so
		masters = []string{c.Nodes[0].Addr}
	}
	q := url.Values{}
	for _, a := range masters[1:] {
		q.Add("addr", a)
	}
	return fmt.Sprintf("redis://%s/0?%s&prefix=t%d:", masters[0], q.Encode(), prefixSeq.Add(1))
}

// live returns the nodes whose process runs.
func (c *Cluster) live() []*Server {
	var out []*Server
	for _, s := range c.Nodes {
		if s.PID() != 0 {
			out = append(out, s)
		}
	}
	return out
}

// node is one line of CLUSTER NODES.
type node struct {
	addr     string // host:port, without the bus port
	master   bool
	failed   bool // flagged fail (or fail?) by the node asked
	hasSlots bool
}

func clusterNodes(addr string) ([]node, error) {
	text, err := doString(addr, "CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	var out []node
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		a, _, _ := strings.Cut(f[1], "@")
		flags := "," + f[2] + ","
		out = append(out, node{
			addr:     a,
			master:   strings.Contains(flags, ",master,"),
			failed:   strings.Contains(flags, ",fail,") || strings.Contains(flags, ",fail?,"),
			hasSlots: len(f) > 8,
		})
	}
	return out, nil
}

// WaitHealthy waits until every running node reports the cluster ok and
// sees every slot served by a running master, and every running replica
// is in sync with its master. After a master is killed it thus waits for
// its replica to take over.
func (c *Cluster) WaitHealthy(timeout time.Duration) error {
	return waitFor(timeout, "Redis Cluster healthy", func() (bool, error) {
		live := c.live()
		running := map[string]bool{}
		for _, s := range live {
			running[s.Addr] = true
		}
		for _, s := range live {
			info, err := doString(s.Addr, "CLUSTER", "INFO")
			if err != nil {
				return false, fmt.Errorf("%s: %v", s.Addr, err)
			}
			if st := infoField(info, "cluster_state"); st != "ok" {
				return false, fmt.Errorf("%s: cluster_state %s", s.Addr, st)
			}
			nodes, err := clusterNodes(s.Addr)
			if err != nil {
				return false, err
			}
			for _, n := range nodes {
				if n.master && n.hasSlots && (n.failed || !running[n.addr]) {
					return false, fmt.Errorf("%s: slots still held by %s, which is down", s.Addr, n.addr)
				}
			}
			if role, _ := s.Info("replication", "role"); role == "slave" {
				if _, err := synced(s.Addr); err != nil {
					return false, err
				}
			}
		}
		return true, nil
	})
}

// MasterFor returns the node that serves key's slot now (key may be a hash
// tag alone, "{t/x}"), as a running node sees it.
func (c *Cluster) MasterFor(key string) (*Server, error) {
	live := c.live()
	if len(live) == 0 {
		return nil, errors.New("no node is running")
	}
	slot, err := doString(live[0].Addr, "CLUSTER", "KEYSLOT", key)
	if err != nil {
		return nil, err
	}
	reply, err := do(live[0].Addr, "CLUSTER", "SHARDS")
	if err != nil {
		return nil, err
	}
	want, _ := strconv.Atoi(slot)
	shards, _ := reply.([]any)
	for _, sh := range shards {
		m := pairs(sh)
		ranges, _ := m["slots"].([]any)
		in := false
		for i := 0; i+1 < len(ranges); i += 2 {
			lo, _ := ranges[i].(int64)
			hi, _ := ranges[i+1].(int64)
			in = in || int64(want) >= lo && int64(want) <= hi
		}
		if !in {
			continue
		}
		nodes, _ := m["nodes"].([]any)
		for _, n := range nodes {
			nm := pairs(n)
			if nm["role"] != "master" {
				continue
			}
			port, _ := nm["port"].(int64)
			addr := fmt.Sprintf("%v:%d", nm["ip"], port)
			for _, s := range live {
				if s.Addr == addr {
					return s, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("no running master serves slot %s", slot)
}

// ReplicasOf returns the running nodes that replicate master.
func (c *Cluster) ReplicasOf(master *Server) []*Server {
	var out []*Server
	for _, s := range c.live() {
		role, _ := s.Info("replication", "role")
		host, _ := s.Info("replication", "master_host")
		port, _ := s.Info("replication", "master_port")
		if role == "slave" && host+":"+port == master.Addr {
			out = append(out, s)
		}
	}
	return out
}

// pairs reads a flat name, value array reply into a map.
func pairs(v any) map[string]any {
	arr, _ := v.([]any)
	m := make(map[string]any, len(arr)/2)
	for i := 0; i+1 < len(arr); i += 2 {
		if k, ok := arr[i].(string); ok {
			m[k] = arr[i+1]
		}
	}
	return m
}
