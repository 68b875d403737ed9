package main

// Redis scenarios: postern on one redis-server and on a Redis Cluster (three
// masters, each with a replica), all private and on 127.0.0.1, started by
// redistest. The nodes run in this process except for the fan-out, whose
// servers are child processes as in the channels scenarios.

import (
	"context"
	"encoding/csv"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

func init() {
	register(Scenario{
		Name:     "redis/scale",
		Baseline: "redis-benchmark XADD on the same redis-server in the same round: its rate, and redis-server CPU per XADD",
		Run:      func(ctx context.Context, o Options) ([]Figure, error) { return runScale(ctx, o, false) },
	})
	register(Scenario{
		Name:     "redis/scale-cluster",
		Baseline: "redis-benchmark --cluster XADD on the same Redis Cluster in the same round: its rate, and the cluster's CPU per XADD",
		Run:      func(ctx context.Context, o Options) ([]Figure, error) { return runScale(ctx, o, true) },
	})
	register(Scenario{
		Name:     "redis/produce",
		Baseline: "plain net/http handler answering 200, same client, same connections, same round",
		Run:      runRedisProduce,
	})
	register(Scenario{
		Name:     "redis/fanout",
		Baseline: "the same subscribers on one memory-engine node, same round",
		Run:      runRedisFanout,
	})
	register(Scenario{
		Name:     "redis/wait-replicas",
		Baseline: "the same load with --redis-wait-replicas 0, on the same master and replica, same round",
		Run:      runWaitReplicas,
	})
}

// redisTunnels spreads the load over several tunnels.
const redisTunnels = 8

// scaleNodes are the node counts of the scale curve.
var scaleNodes = []int{1, 2, 4}

// deployment is a Redis the scenarios run postern on: one redis-server or a
// cluster.
type deployment struct {
	servers []*redistest.Server // every process, replicas included
	masters []*redistest.Server // those that take writes
	url     func() string       // a fresh key prefix each call
	cluster bool
	close   func()
}

func launchDeployment(cluster bool) (*deployment, error) {
	dir, err := os.MkdirTemp("", "postern-bench-redis-")
	if err != nil {
		return nil, err
	}
	if !cluster {
		rs, err := redistest.Launch(dir, redistest.Options{})
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		return &deployment{
			servers: []*redistest.Server{rs}, masters: []*redistest.Server{rs},
			url:   rs.URL,
			close: func() { rs.Close(); os.RemoveAll(dir) },
		}, nil
	}
	cl, err := redistest.LaunchCluster(dir, redistest.ClusterOptions{})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	d := &deployment{servers: cl.Nodes, url: cl.URL, cluster: true, close: func() { cl.Close(); os.RemoveAll(dir) }}
	for _, s := range cl.Nodes {
		if role, _ := s.Info("replication", "role"); role == "master" {
			d.masters = append(d.masters, s)
		}
	}
	return d, nil
}

// cpu is the CPU time, in seconds, every process of d has used so far.
func (d *deployment) cpu() float64 {
	sum := 0.0
	for _, s := range d.servers {
		_, c := cpuSeconds(s.PID())
		sum += c
	}
	return sum
}

// resetStats zeroes INFO commandstats on every master.
func (d *deployment) resetStats() error {
	for _, s := range d.masters {
		if _, err := s.Do("CONFIG", "RESETSTAT"); err != nil {
			return err
		}
	}
	return nil
}

// functionCalls are the commands that run a script or function: each has
// a fixed cost in Redis well above a plain command's.
var functionCalls = map[string]bool{
	"evalsha": true, "eval": true, "evalsha_ro": true, "eval_ro": true, "fcall": true, "fcall_ro": true,
}

// harnessCalls are commands of the harness and of connection upkeep, not
// counted.
var harnessCalls = map[string]bool{
	"info": true, "config": true, "hello": true, "ping": true, "cluster": true, "client": true,
	"subscribe": true, "unsubscribe": true, "ssubscribe": true, "sunsubscribe": true, "command": true, "readonly": true,
	"select": true, "auth": true,
}

// commandCounts sums INFO commandstats over the masters: function calls,
// and every command Redis ran, those clients sent (functions included) and
// those functions ran (INFO does not tell them apart). With
// POSTERN_BENCH_REDIS_COMMANDS set it prints every command's count per
// msgs.
func (d *deployment) commandCounts(msgs float64) (calls, commands float64, err error) {
	each := map[string]float64{}
	usec := map[string]float64{} // time Redis spent running each, µs
	defer func() {
		if os.Getenv("POSTERN_BENCH_REDIS_COMMANDS") == "" || err != nil {
			return
		}
		names := slices.Sorted(maps.Keys(each))
		var b strings.Builder
		for _, n := range names {
			fmt.Fprintf(&b, " %s=%.2f", n, each[n]/msgs)
		}
		fmt.Fprintf(os.Stderr, "  Redis commands per delivered msg:%s\n", b.String())
		b.Reset()
		total := 0.0
		for _, n := range names {
			if functionCalls[strings.SplitN(n, "|", 2)[0]] {
				fmt.Fprintf(&b, " %s=%.1fµs", n, usec[n]/msgs)
			} else {
				total += usec[n]
			}
		}
		fmt.Fprintf(os.Stderr, "  time Redis ran commands per delivered msg:%s (their commands included), other commands %.1fµs\n", b.String(), total/msgs)
		b.Reset()
		for _, n := range names {
			if each[n] > 0 {
				fmt.Fprintf(&b, " %s=%.2f", n, usec[n]/each[n])
			}
		}
		fmt.Fprintf(os.Stderr, "  µs per call:%s\n", b.String())
		d.printIO("delivered msg", msgs)
	}()
	for _, s := range d.masters {
		r, err := s.Do("INFO", "commandstats")
		if err != nil {
			return 0, 0, err
		}
		info, _ := r.(string)
		for _, line := range strings.Split(info, "\n") {
			name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "cmdstat_"), ":calls=")
			if !ok {
				continue
			}
			top, _, _ := strings.Cut(name, "|")
			if harnessCalls[top] {
				continue
			}
			fields := strings.Split(rest, ",")
			n, _ := strconv.ParseFloat(fields[0], 64)
			each[name] += n
			if len(fields) > 1 {
				u, _ := strconv.ParseFloat(strings.TrimPrefix(fields[1], "usec="), 64)
				usec[name] += u
			}
			if functionCalls[top] {
				calls += n
			}
			commands += n
		}
	}
	return calls, commands, nil
}

// printIO prints, per unit, the reads and writes Redis made on its
// clients' connections (INFO stats, summed over the masters): the event
// loop's share of its CPU grows with them, not with the commands.
func (d *deployment) printIO(unit string, units float64) {
	reads, writes := d.io()
	fmt.Fprintf(os.Stderr, "  Redis reads per %s %.2f, writes %.2f\n", unit, reads/units, writes/units)
}

// io returns the reads and writes Redis made on its clients' connections
// since the last resetStats, summed over the masters.
func (d *deployment) io() (reads, writes float64) {
	for _, s := range d.masters {
		r, _ := s.Info("stats", "total_reads_processed")
		w, _ := s.Info("stats", "total_writes_processed")
		rn, _ := strconv.ParseFloat(r, 64)
		wn, _ := strconv.ParseFloat(w, 64)
		reads += rn
		writes += wn
	}
	return reads, writes
}

// scaleResult is one point of the scale curve.
type scaleResult struct {
	delivered float64 // messages consumed per second
	cpuPerMsg float64 // Redis CPU per delivered message, µs
	calls     float64 // function calls per delivered message
	commands  float64 // commands Redis ran per delivered message
	selfCPU   float64 // this process's CPU per delivered message (the load's clients and the nodes), µs
	empty     float64 // polls answered 204 per delivered message
	reads     float64 // reads Redis made on its connections per delivered message
	writes    float64 // and writes
}

// startNodes starts n postern nodes on url.
func startNodes(url string, n int, tweak func(*node.Config)) ([]*benchNode, error) {
	var nodes []*benchNode
	for i := range n {
		cfg := node.DefaultConfig()
		cfg.Store = url
		cfg.NodeID = fmt.Sprint("bench-", i)
		cfg.ClusterInsecure = true
		cfg.Tunnel.MaxLen = 1_000_000
		cfg.Tunnel.Backpressure = false
		cfg.MaxConnectionsPerAddr = -1
		if tweak != nil {
			tweak(&cfg)
		}
		nd, err := startNode(cfg)
		if err != nil {
			stopNodes(nodes)
			return nil, err
		}
		nodes = append(nodes, nd)
	}
	return nodes, nil
}

func stopNodes(nodes []*benchNode) {
	for _, n := range nodes {
		n.stop()
	}
}

// deliver runs the produce and consume load on nodes: connections in
// pairs, a producer and a long-polling consumer of one tunnel, the
// producer on one node and the consumer on the next, so that with more
// than one node every message crosses nodes through Redis and most
// consumes are woken by another node. Producers stop after d; consumers
// go on until every message produced is consumed (for at most d more),
// so that what Redis did is what delivering those messages took. It
// returns the messages consumed, the time taken and the polls that found
// nothing (204) in that time.
//
// The clients are leanConns: with net/http's client the load took about
// as much of this process's CPU as the nodes it measures, on the same two
// cores, against redis-benchmark's C client for the baseline.
func deliver(ctx context.Context, nodes []*benchNode, conns int, d time.Duration) (consumed int64, elapsed time.Duration, empty int64, err error) {
	body := []byte(strings.Repeat("x", 256))
	var produced, got, none, last atomic.Int64 // last: when the latest message was consumed, ns after start
	ctx, drained := context.WithCancel(ctx)
	defer drained()
	// Each worker's own client, made on its first call, on the context
	// closedLoop gives it: a phase's end that cuts an exchange short
	// has then always ended the phase for closedLoop first.
	clients := make([]*leanConn, conns)
	hosts := make([]string, conns)
	reqs := make([][]byte, conns)
	for w := range conns {
		pair := w / 2
		tunnel := fmt.Sprint("/t/bench", pair%redisTunnels)
		node := pair + w%2 // a consumer polls the node after its producer's
		hosts[w] = strings.TrimPrefix(nodes[node%len(nodes)].URL, "http://")
		if w%2 == 0 {
			reqs[w] = leanRequest("POST", hosts[w], tunnel, "text/plain", body)
		} else {
			reqs[w] = leanRequest("GET", hosts[w], tunnel+"/poll?timeout=1", "", nil)
		}
	}
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.close()
			}
		}
	}()
	start := time.Now()
	_, err = closedLoop(ctx, conns, 2*d, func(ctx context.Context, w, seq int) error {
		if clients[w] == nil {
			clients[w] = newLeanConn(ctx, hosts[w], leanTimeout)
		}
		if w%2 == 0 {
			if time.Since(start) > d {
				return errDrained
			}
			status, err := clients[w].do(reqs[w])
			if err != nil {
				return fmt.Errorf("produce: %w", err)
			}
			if status != http.StatusCreated {
				return fmt.Errorf("produce: %d, want 201", status)
			}
			produced.Add(1)
			return nil
		}
		status, err := clients[w].do(reqs[w])
		if err != nil {
			return fmt.Errorf("consume: %w", err)
		}
		switch status {
		case http.StatusOK:
			n := got.Add(1)
			since := time.Since(start)
			last.Store(int64(since))
			if since > d && n >= produced.Load() {
				drained() // every message produced is consumed
			}
		case http.StatusNoContent:
			none.Add(1)
		default:
			return fmt.Errorf("consume: %d", status)
		}
		return nil
	})
	return got.Load(), time.Duration(last.Load()), none.Load(), err
}

// scalePoint measures n nodes on dep. The nodes run in this process with
// the load: in child processes (to count their CPU apart from the
// load's, 2026-12-08, 5 interleaved pairs) the extra Go runtimes on 2
// cores raised the CPU per delivered msg of 2 nodes from 134 µs for
// nodes and load together to 143 for the nodes plus 45 for the load, and
// Redis's from 24.9 to 29.4 µs, at the same rate; the load's share is
// thus about 45 µs, a quarter.
func scalePoint(ctx context.Context, dep *deployment, n int, o Options) (scaleResult, error) {
	nodes, err := startNodes(dep.url(), n, nil)
	if err != nil {
		return scaleResult{}, err
	}
	defer stopNodes(nodes)
	if err := dep.resetStats(); err != nil {
		return scaleResult{}, err
	}
	cpu0 := dep.cpu()
	self0, _ := cpuSeconds(0)
	consumed, elapsed, empty, err := deliver(ctx, nodes, o.Conns, o.Duration)
	if err != nil {
		return scaleResult{}, err
	}
	cpu1 := dep.cpu()
	self1, _ := cpuSeconds(0)
	if consumed == 0 {
		return scaleResult{}, fmt.Errorf("%d nodes: nothing delivered", n)
	}
	msgs := float64(consumed)
	if os.Getenv("POSTERN_BENCH_REDIS_COMMANDS") != "" {
		fmt.Fprintf(os.Stderr, "%d nodes: Redis CPU per delivered msg %.1fµs, %.0f msg/s\n", n, (cpu1-cpu0)/msgs*1e6, msgs/elapsed.Seconds())
	}
	reads, writes := dep.io()
	calls, commands, err := dep.commandCounts(msgs)
	if err != nil {
		return scaleResult{}, err
	}
	return scaleResult{
		empty:     float64(empty) / msgs,
		reads:     reads / msgs,
		writes:    writes / msgs,
		delivered: msgs / elapsed.Seconds(),
		cpuPerMsg: (cpu1 - cpu0) / msgs * 1e6,
		calls:     calls / msgs,
		commands:  commands / msgs,
		selfCPU:   (self1 - self0) / msgs * 1e6,
	}, nil
}

// runScale measures the scale curve on one redis-server or a cluster:
// delivered msg/s of 1, 2 and 4 nodes against redis-benchmark's XADD/s,
// and Redis CPU per delivered message against Redis CPU per XADD, all in
// one round on the same Redis.
func runScale(ctx context.Context, o Options, cluster bool) ([]Figure, error) {
	dep, err := launchDeployment(cluster)
	if err != nil {
		return nil, err
	}
	defer dep.close()
	points := map[int]scaleResult{}
	var ceiling scaleResult
	for _, n := range scaleNodes {
		p, err := scalePoint(ctx, dep, n, o)
		if err != nil {
			return nil, fmt.Errorf("%d nodes: %w", n, err)
		}
		points[n] = p
	}
	if !cluster {
		if ceiling, err = memoryCeiling(ctx, o); err != nil {
			return nil, fmt.Errorf("memory engine: %w", err)
		}
	}
	if err := dep.resetStats(); err != nil {
		return nil, err
	}
	cpu0 := dep.cpu()
	rate, xadds, err := redisBenchmarkXADD(ctx, dep, o.Conns, o.Duration)
	if err != nil {
		return nil, err
	}
	cpuPerXADD := (dep.cpu() - cpu0) / xadds * 1e6
	xaddReads, xaddWrites := dep.io()
	if os.Getenv("POSTERN_BENCH_REDIS_COMMANDS") != "" {
		if _, _, err := dep.commandCounts(xadds); err != nil {
			return nil, err
		}
		fmt.Fprintf(os.Stderr, "  (above: per XADD of redis-benchmark, %.1fµs of Redis CPU each)\n", cpuPerXADD)
	}
	var figs []Figure
	for _, n := range scaleNodes {
		p := points[n]
		nodes := fmt.Sprintf("%d node", n)
		if n > 1 {
			nodes += "s"
		}
		msgs := Figure{Name: "delivered msg/s, " + nodes, Unit: "msg/s", Value: p.delivered, Baseline: rate}
		cpu := Figure{Name: "Redis CPU per delivered msg, " + nodes, Unit: "µs", Value: p.cpuPerMsg, Baseline: cpuPerXADD, LowerIsBetter: true}
		if n == 2 && !cluster {
			// Issue 19's goals.
			msgs.Goal, cpu.Goal = 0.3, 2
		}
		self := Figure{Name: "node and client CPU per delivered msg, " + nodes, Unit: "µs", Value: p.selfCPU, LowerIsBetter: true}
		if !cluster {
			self.Name += " (baseline: 1 node on the memory engine)"
			self.Baseline = ceiling.selfCPU
		}
		figs = append(figs, msgs, cpu, self,
			// Command counts do not depend on the machine's load at all.
			Figure{Name: "Redis function calls per delivered msg, " + nodes, Unit: "calls", Value: p.calls, LowerIsBetter: true},
			Figure{Name: "Redis commands per delivered msg (sent, and run by functions), " + nodes, Unit: "cmds", Value: p.commands, LowerIsBetter: true})
		if n == 2 {
			// Redis's event loop costs per read and write, not per
			// command; a poll that times out empty is HTTP work that
			// delivers nothing.
			figs = append(figs,
				Figure{Name: "Redis reads per delivered msg (baseline: per XADD), " + nodes, Unit: "reads", Value: p.reads, Baseline: xaddReads / xadds, LowerIsBetter: true},
				Figure{Name: "Redis writes per delivered msg (baseline: per XADD), " + nodes, Unit: "writes", Value: p.writes, Baseline: xaddWrites / xadds, LowerIsBetter: true},
				Figure{Name: "empty polls (204) per delivered msg, " + nodes, Unit: "polls", Value: p.empty, LowerIsBetter: true})
		}
	}
	if !cluster {
		figs = append(figs, Figure{Name: "delivered msg/s, 1 node on the memory engine (ceiling of the HTTP work)", Unit: "msg/s", Value: ceiling.delivered, Baseline: rate})
	}
	return figs, nil
}

// memoryCeiling runs the delivery load of the scale curve on one node on
// the memory engine: the same producers and long-polling consumers with no
// Redis at all, so what it delivers is what the HTTP work alone allows on
// this machine, a ceiling for every point of the curve; its CPU per
// delivered message (this process: clients and node) is the floor of the
// nodes' own work.
func memoryCeiling(ctx context.Context, o Options) (scaleResult, error) {
	nodes, err := startNodes("memory", 1, nil)
	if err != nil {
		return scaleResult{}, err
	}
	defer stopNodes(nodes)
	self0, _ := cpuSeconds(0)
	consumed, elapsed, _, err := deliver(ctx, nodes, o.Conns, o.Duration)
	if err != nil {
		return scaleResult{}, err
	}
	self1, _ := cpuSeconds(0)
	if consumed == 0 {
		return scaleResult{}, fmt.Errorf("nothing delivered")
	}
	msgs := float64(consumed)
	return scaleResult{delivered: msgs / elapsed.Seconds(), selfCPU: (self1 - self0) / msgs * 1e6}, nil
}

// runRedisProduce measures produce on one node on Redis against the plain
// handler and baseline-hello, in the same round.
func runRedisProduce(ctx context.Context, o Options) ([]Figure, error) {
	base, stopBase, err := startHTTP(plainHandler)
	if err != nil {
		return nil, err
	}
	defer stopBase()
	hello, stopHello, err := startHello()
	if err != nil {
		return nil, err
	}
	defer stopHello()
	dep, err := launchDeployment(false)
	if err != nil {
		return nil, err
	}
	defer dep.close()
	nodes, err := startNodes(dep.url(), 1, nil)
	if err != nil {
		return nil, err
	}
	defer stopNodes(nodes)
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()
	post := func(url string, status int) func(ctx context.Context, w, seq int) error {
		return func(ctx context.Context, w, seq int) error {
			return requestOp(c, "POST", url+"/t/load-"+strconv.Itoa(w%redisTunnels), benchBody, status)(ctx, w, seq)
		}
	}
	baseline, baseCPU, err := measured(ctx, o.Conns, o.Duration, post(base, 200))
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	helloRes, err := helloLoad(ctx, o.Conns, o.Duration, post(hello, 200))
	if err != nil {
		return nil, err
	}
	redis0 := dep.cpu()
	produce, produceCPU, err := measured(ctx, o.Conns, o.Duration, post(nodes[0].URL, 201))
	if err != nil {
		return nil, fmt.Errorf("produce: %w", err)
	}
	redisCPU := 0.0
	if produce.Ops > 0 {
		redisCPU = (dep.cpu() - redis0) / float64(produce.Ops) * 1e6
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		// Issue 19: 1.5x the original tunnelhead on the same Redis, which
		// measured 0.36x a plain Go handler.
		{Name: "produce req/s on Redis", Unit: "req/s", Value: produce.Rate(), Baseline: baseline.Rate(), Goal: 0.53, Hello: helloRes.Rate()},
		{Name: "produce p99 on Redis", Unit: "ms", Value: ms(produce.Percentile(99)), Baseline: ms(baseline.Percentile(99)), LowerIsBetter: true, Hello: ms(helloRes.Percentile(99))},
		// CPU per request, for before/after comparisons on a busy
		// machine: this process (client and node) plus redis-server,
		// against this process's for the plain handler.
		{Name: "produce CPU per request (client, node and redis-server)", Unit: "µs", Value: produceCPU + redisCPU, Baseline: baseCPU, LowerIsBetter: true},
		{Name: "redis-server CPU per produce", Unit: "µs", Value: redisCPU, LowerIsBetter: true},
	}, nil
}

// redisFanoutSubscribers is how many subscribers the fan-out splits over
// two nodes.
const redisFanoutSubscribers = 5000

// runRedisFanout measures channel fan-out to subscribers split over two
// nodes on one Redis (messages published on the first), against the same
// subscribers on one memory-engine node.
func runRedisFanout(ctx context.Context, o Options) ([]Figure, error) {
	if err := raiseFileLimit(redisFanoutSubscribers + 1000); err != nil {
		return nil, err
	}
	dep, err := launchDeployment(false)
	if err != nil {
		return nil, err
	}
	defer dep.close()
	url := dep.url()
	var chs []*child
	defer func() {
		for _, c := range chs {
			c.stop()
		}
	}()
	for range 2 {
		c, err := startChild("postern", childStoreEnv+"="+url)
		if err != nil {
			return nil, err
		}
		chs = append(chs, c)
	}
	p, err := measureFanout(ctx, "postern on Redis", chs, "/c/fan", "/c/fan", redisFanoutSubscribers)
	if err != nil {
		return nil, err
	}
	b, err := fanout(ctx, "postern", "/c/fan", "/c/fan", redisFanoutSubscribers)
	if err != nil {
		return nil, err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	n := strconv.Itoa(redisFanoutSubscribers)
	return []Figure{
		{Name: "p50 delivery to " + n + " subs on 2 nodes", Unit: "ms", Value: ms(p.p50), Baseline: ms(b.p50), LowerIsBetter: true},
		{Name: "p99 delivery to " + n + " subs on 2 nodes", Unit: "ms", Value: ms(p.p99), Baseline: ms(b.p99), LowerIsBetter: true},
		{Name: "server CPU per delivery (" + n + " subs on 2 nodes)", Unit: "µs", Value: us(p.serverCPU), Baseline: us(b.serverCPU), LowerIsBetter: true},
	}, nil
}

// runWaitReplicas measures what --redis-wait-replicas 1 costs: two nodes
// on a master with one replica, the delivery load with and without it.
func runWaitReplicas(ctx context.Context, o Options) ([]Figure, error) {
	dir, err := os.MkdirTemp("", "postern-bench-wait-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	master, err := redistest.Launch(dir, redistest.Options{})
	if err != nil {
		return nil, err
	}
	defer master.Close()
	rdir := dir + "/replica"
	if err := os.Mkdir(rdir, 0o700); err != nil {
		return nil, err
	}
	replica, err := redistest.Launch(rdir, redistest.Options{ReplicaOf: master.Addr})
	if err != nil {
		return nil, err
	}
	defer replica.Close()
	if err := replica.WaitSynced(30 * time.Second); err != nil {
		return nil, err
	}
	run := func(wait int) (float64, error) {
		nodes, err := startNodes(master.URL(), 2, func(c *node.Config) { c.RedisWaitReplicas = wait })
		if err != nil {
			return 0, err
		}
		defer stopNodes(nodes)
		consumed, elapsed, _, err := deliver(ctx, nodes, o.Conns, o.Duration)
		return float64(consumed) / elapsed.Seconds(), err
	}
	without, err := run(0)
	if err != nil {
		return nil, err
	}
	with, err := run(1)
	if err != nil {
		return nil, err
	}
	return []Figure{{Name: "delivered msg/s, 2 nodes, waiting for 1 replica", Unit: "msg/s", Value: with, Baseline: without}}, nil
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

// redisBenchmarkXADD runs redis-benchmark's XADD on dep with conns
// connections for about d and returns its rate and how many XADDs it sent.
// On a cluster the keys spread over every master.
func redisBenchmarkXADD(ctx context.Context, dep *deployment, conns int, d time.Duration) (rate, n float64, err error) {
	bin, err := exec.LookPath("redis-benchmark")
	if err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark is not installed (it comes with redis-server's tools)")
	}
	host, port, _ := strings.Cut(dep.masters[0].Addr, ":")
	// About d at ~60k requests/s; the rate, not the count, is reported.
	total := max(int(d.Seconds()*60_000), 20_000)
	args := []string{"-h", host, "-p", port, "-c", strconv.Itoa(conns), "-n", strconv.Itoa(total), "--csv"}
	key := "bench:xadd"
	if dep.cluster {
		// redis-benchmark puts each master's own hash tag in place of
		// {tag}: a stream on every master.
		args = append(args, "--cluster")
		key = "bench:{tag}"
	}
	args = append(args, "XADD", key, "MAXLEN", "~", "100000", "*", "body", strings.Repeat("x", 256))
	out, err := exec.CommandContext(ctx, bin, args...).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark: %v", err)
	}
	// In cluster mode it first lists the masters: only quoted lines are
	// the CSV.
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, `"`) {
			lines = append(lines, l)
		}
	}
	recs, err := csv.NewReader(strings.NewReader(strings.Join(lines, "\n"))).ReadAll()
	if err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark output: %v: %q", err, out)
	}
	for _, r := range recs {
		if len(r) >= 2 && strings.HasPrefix(r[0], "XADD") {
			rate, err := strconv.ParseFloat(r[1], 64)
			return rate, float64(total), err
		}
	}
	return 0, 0, fmt.Errorf("redis-benchmark printed no XADD rate: %q", out)
}
