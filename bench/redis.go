package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/rueidis"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

func init() {
	register(Scenario{
		Name:     "redis/two-nodes",
		Baseline: "redis-benchmark XADD on the same redis-server, same connection count, no pipelining",
		Run:      runRedisTwoNodes,
	})
}

// redisTunnels spreads the load over several tunnels.
const redisTunnels = 8

// runRedisTwoNodes starts a private redis-server and two postern nodes on
// it. Half the connections produce on one node, the other half long-poll
// consume the same tunnels on the other node, so every message crosses
// nodes through Redis and most consumes are woken by a publish from the
// other node. The ceiling is redis-benchmark's XADD rate on the same
// server at the same connection count.
func runRedisTwoNodes(ctx context.Context, o Options) ([]Figure, error) {
	dir, err := os.MkdirTemp("", "postern-bench-redis-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	rs, err := redistest.Launch(dir, redistest.Options{})
	if err != nil {
		return nil, err
	}
	defer rs.Close()

	var nodes []*benchNode
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	for i := range 2 {
		cfg := node.DefaultConfig()
		cfg.Store = fmt.Sprintf("redis://%s/0?prefix=bench:", rs.Addr)
		cfg.NodeID = fmt.Sprint("bench-", i)
		cfg.ClusterSecret = benchClusterSecret
		cfg.Tunnel.MaxLen = 1_000_000
		cfg.Tunnel.Backpressure = false
		n, err := startNode(cfg)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}

	c := httpClient(o.Conns)
	defer c.Transport.(*http.Transport).CloseIdleConnections()
	var produced, consumed atomic.Int64
	body := strings.Repeat("x", 256)
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rs.Addr}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if err := rc.Do(ctx, rc.B().ConfigResetstat().Build()).Error(); err != nil {
		return nil, err
	}
	self0, redis0 := cpuSeconds(rs.PID())
	res, err := closedLoop(ctx, o.Conns, o.Duration, func(ctx context.Context, w, seq int) error {
		pair := w / 2
		tunnel := fmt.Sprint("/t/bench", pair%redisTunnels)
		if w%2 == 0 { // producer on node pair%2
			req, _ := http.NewRequestWithContext(ctx, "POST", nodes[pair%2].URL+tunnel, strings.NewReader(body))
			req.Header.Set("Content-Type", "text/plain")
			if err := expect(c, req, http.StatusCreated); err != nil {
				return err
			}
			produced.Add(1)
			return nil
		}
		// consumer on the other node
		req, _ := http.NewRequestWithContext(ctx, "GET", nodes[1-pair%2].URL+tunnel+"/poll?timeout=1", nil)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		drain(resp)
		switch resp.StatusCode {
		case http.StatusOK:
			consumed.Add(1)
		case http.StatusNoContent:
		default:
			return fmt.Errorf("consume: %d", resp.StatusCode)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	total := float64(produced.Load()+consumed.Load()) / res.Elapsed.Seconds()
	self1, redis1 := cpuSeconds(rs.PID())
	msgs := float64(produced.Load() + consumed.Load())
	calls, scripted, err := commandCounts(ctx, rc)
	if err != nil {
		return nil, err
	}

	ceiling, err := redisBenchmarkXADD(ctx, rs.Addr, o.Conns, o.Duration)
	if err != nil {
		return nil, err
	}
	helloURL, stopHello, err := startHello()
	if err != nil {
		return nil, err
	}
	defer stopHello()
	hello, err := helloLoad(ctx, o.Conns, o.Duration/2, requestOp(c, http.MethodPost, helloURL+"/t/bench0", []byte(body), http.StatusOK))
	if err != nil {
		return nil, err
	}
	return []Figure{
		{Name: "produce+consume msg/s vs XADD/s", Unit: "msg/s", Value: total, Baseline: ceiling},
		{Name: "produce+consume msg/s, 2 nodes", Unit: "msg/s", Value: total, Goal: 10_000, Hello: hello.Rate()},
		{Name: "produce msg/s", Unit: "msg/s", Value: float64(produced.Load()) / res.Elapsed.Seconds()},
		{Name: "consume msg/s", Unit: "msg/s", Value: float64(consumed.Load()) / res.Elapsed.Seconds()},
		// CPU time per message is less sensitive to other load on the
		// machine than rates are.
		{Name: "CPU per msg: nodes + load generator", Unit: "us", Value: (self1 - self0) / msgs * 1e6, LowerIsBetter: true},
		{Name: "CPU per msg: redis-server", Unit: "us", Value: (redis1 - redis0) / msgs * 1e6, LowerIsBetter: true},
		// Command counts do not depend on the machine's load at all.
		{Name: "Redis calls per msg (scripts, PUBLISH, ...)", Unit: "calls", Value: calls / msgs, LowerIsBetter: true},
		{Name: "Redis commands run inside scripts per msg", Unit: "cmds", Value: scripted / msgs, LowerIsBetter: true},
	}, nil
}

// commandCounts sums INFO commandstats: calls sent by clients (scripts,
// PUBLISH and plain commands), and commands scripts ran.
func commandCounts(ctx context.Context, c rueidis.Client) (calls, scripted float64, err error) {
	info, err := c.Do(ctx, c.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		return 0, 0, err
	}
	// Only scripts and these run from clients in this scenario.
	topLevel := map[string]bool{"evalsha": true, "eval": true, "publish": true, "getdel": true, "ping": true, "subscribe": true}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "cmdstat_"), ":calls=")
		if !ok || strings.Contains(name, "|") || name == "info" || name == "hello" {
			continue
		}
		n, _ := strconv.ParseFloat(strings.SplitN(rest, ",", 2)[0], 64)
		if topLevel[name] {
			calls += n
		} else {
			scripted += n
		}
	}
	return calls, scripted, nil
}

// cpuSeconds returns the CPU time used so far by this process and by
// process pid (read from /proc; 0 where that is not available).
func cpuSeconds(pid int) (self, other float64) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		self = float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return self, 0
	}
	// Fields after the command name (which may hold spaces): utime is the
	// 14th field of the line, stime the 15th, in clock ticks (100 a second
	// on Linux).
	rest := string(b)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return self, 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return self, (u + st) / 100
}

// redisBenchmarkXADD runs redis-benchmark's XADD on addr with conns
// connections for about d and returns its requests per second.
func redisBenchmarkXADD(ctx context.Context, addr string, conns int, d time.Duration) (float64, error) {
	bin, err := exec.LookPath("redis-benchmark")
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark is not installed (it comes with redis-server's tools)")
	}
	host, port, _ := strings.Cut(addr, ":")
	// About d at ~60k requests/s; the rate, not the count, is reported.
	n := max(int(d.Seconds()*60_000), 20_000)
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-c", strconv.Itoa(conns), "-n", strconv.Itoa(n),
		"--csv", "XADD", "bench:xadd", "MAXLEN", "~", "100000", "*", "body", strings.Repeat("x", 256))
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark: %v", err)
	}
	recs, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark output: %v: %q", err, out)
	}
	for _, r := range recs {
		if len(r) >= 2 && strings.HasPrefix(r[0], "XADD") {
			return strconv.ParseFloat(r[1], 64)
		}
	}
	return 0, fmt.Errorf("redis-benchmark printed no XADD rate: %q", out)
}

// benchClusterSecret is the cluster secret of the two-node scenario's
// nodes (a store shared by nodes asks for one).
const benchClusterSecret = "bench-two-nodes-secret-0123456789abcdef"
