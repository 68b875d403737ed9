package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/postern/postern/internal/chaos"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// The chaos scenario is the long run of the delivery guarantees' chaos
// tests (internal/chaos): many rounds per engine of mixed load while
// something fails, each checked. Nodes run as deployed, with the default
// delivery lease and Redis timeout.
func init() {
	register(Scenario{
		Name:     "chaos",
		Baseline: "none: messages lost, invented, stored twice or misordered must be 0 (only with -chaos ROUNDS)",
		Run:      runChaos,
	})
}

// chaosSecret is the cluster secret of the scenario's Redis nodes.
const chaosSecret = "bench-chaos-secret-0123456789abcdef"

func runChaos(ctx context.Context, o Options) ([]Figure, error) {
	if o.Chaos <= 0 {
		fmt.Fprintln(os.Stderr, "  chaos: skipped; it runs only when asked for: go run ./bench -run chaos -count 1 -chaos 50")
		return nil, nil
	}
	dir, err := os.MkdirTemp("", "postern-chaos-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin, err := chaos.Build(dir)
	if err != nil {
		return nil, err
	}
	var figs []Figure
	for _, engine := range []func(context.Context, string, string, int) (chaos.Report, error){chaosMemory, chaosFile, chaosRedis} {
		r, err := engine(ctx, bin, dir, o.Chaos)
		if err != nil {
			return nil, err
		}
		figs = append(figs, chaosFigures(r)...)
	}
	return figs, nil
}

// chaosRounds runs rounds rounds named after engine, the fault of round i
// being faults[i%len(faults)], and sums the reports.
func chaosRounds(ctx context.Context, engine string, opts chaos.Options, rounds int, faults ...func() error) (chaos.Report, error) {
	total := chaos.Report{Engine: engine}
	for i := range rounds {
		r, err := chaos.Round(ctx, fmt.Sprintf("%s-%d", engine, i), opts, faults[i%len(faults)])
		if err != nil {
			return total, fmt.Errorf("%s round %d: %w", engine, i, err)
		}
		total.Add(r)
		if !r.OK() {
			fmt.Fprintf(os.Stderr, "  chaos: %s round %d broke a guarantee: %v\n", engine, i, r.Problems)
		}
	}
	fmt.Fprintf(os.Stderr, "  chaos: %s: %v\n", engine, total)
	return total, nil
}

// chaosNode starts a node for the scenario, as deployed.
func chaosNode(bin string, args ...string) (*chaos.Node, error) {
	return chaos.StartNode(bin, args...)
}

// chaosMemory: consumers giving up requests in the middle, nothing else.
func chaosMemory(ctx context.Context, bin, _ string, rounds int) (chaos.Report, error) {
	n, err := chaosNode(bin, "--store", "memory")
	if err != nil {
		return chaos.Report{}, err
	}
	defer n.Stop()
	opts := chaos.Options{Nodes: []string{n.URL}, Lease: defaultLease, Abort: true}
	return chaosRounds(ctx, "memory", opts, rounds, nil)
}

// chaosFile: the node killed (SIGKILL) and started again on its data.
func chaosFile(ctx context.Context, bin, dir string, rounds int) (chaos.Report, error) {
	n, err := chaosNode(bin, "--store", "file:"+filepath.Join(dir, "data"))
	if err != nil {
		return chaos.Report{}, err
	}
	defer n.Stop()
	opts := chaos.Options{Nodes: []string{n.URL}, Lease: defaultLease, Abort: true}
	kill := func() error {
		if err := n.Kill(); err != nil {
			return err
		}
		return n.Restart()
	}
	return chaosRounds(ctx, "file", opts, rounds, kill)
}

// chaosRedis: two nodes on one Redis (append-only, fsync always), Redis
// paused for less and for more than the lease and the round-trip timeout,
// and killed and restarted.
func chaosRedis(ctx context.Context, bin, dir string, rounds int) (chaos.Report, error) {
	rdir := filepath.Join(dir, "redis")
	if err := os.MkdirAll(rdir, 0o700); err != nil {
		return chaos.Report{}, err
	}
	srv, err := redistest.Launch(rdir, redistest.Options{AppendOnly: true, AppendFsync: "always"})
	if err != nil {
		return chaos.Report{}, err
	}
	defer srv.Close()
	var urls []string
	for range 2 {
		n, err := chaosNode(bin, "--store", fmt.Sprintf("redis://%s/0?prefix=chaos:", srv.Addr), "--cluster-secret", chaosSecret)
		if err != nil {
			return chaos.Report{}, err
		}
		defer n.Stop()
		urls = append(urls, n.URL)
	}
	opts := chaos.Options{Nodes: urls, Lease: defaultLease, Abort: true}
	return chaosRounds(ctx, "redis", opts, rounds,
		func() error { return chaos.Pause(srv, defaultLease/2) },
		func() error { return chaos.Pause(srv, 2*defaultLease) },
		func() error { srv.Crash(); return srv.Relaunch() })
}

// defaultLease is the nodes' delivery lease (--delivery-lease's default).
const defaultLease = queue.DefaultLease

func chaosFigures(r chaos.Report) []Figure {
	e := r.Engine
	return []Figure{
		{Name: e + ": rounds", Unit: "rounds", Value: float64(r.Rounds)},
		{Name: e + ": messages acknowledged (tunnels + inbox)", Unit: "msgs", Value: float64(r.Produced + r.MailSent)},
		{Name: e + ": lost, invented, stored twice, misordered", Unit: "msgs", Value: float64(r.Lost + r.MailLost + r.Invented + r.MailInvented + r.Doubled + r.Misordered), LowerIsBetter: true},
		{Name: e + ": received twice (at-least-once after a failure)", Unit: "msgs", Value: float64(r.Redelivered + r.MailRepeated), LowerIsBetter: true},
		{Name: e + ": produces whose outcome stayed unknown", Unit: "msgs", Value: float64(r.Unknown), LowerIsBetter: true},
	}
}
