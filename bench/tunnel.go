package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/postern/postern/internal/node"
)

func init() {
	register(Scenario{
		Name:     "tunnel",
		Baseline: "plain net/http handler answering 200, same client, same connections",
		Run:      func(ctx context.Context, o Options) ([]Figure, error) { return runTunnel(ctx, o, "memory") },
	})
	register(Scenario{
		Name:     "tunnel/file",
		Baseline: "plain net/http handler answering 200, same client, same connections; the node on the default file engine",
		Run:      func(ctx context.Context, o Options) ([]Figure, error) { return runTunnel(ctx, o, "file") },
	})
	register(Scenario{
		Name:     "tunnel-wake",
		Baseline: "none (absolute latencies); for scale, one plain HTTP round trip at the same rate is shown",
		Run:      runTunnelWake,
	})
}

// tunnelConfig is a node sized for load: backpressure off and a queue cap
// large enough that nothing is trimmed.
func tunnelConfig(store string) node.Config {
	cfg := node.DefaultConfig()
	cfg.Store = store
	cfg.Tunnel.MaxLen = 10_000_000
	cfg.Tunnel.Backpressure = false
	return cfg
}

// tunnelNode starts a node of tunnelConfig in this process.
func tunnelNode(store string) (*benchNode, error) { return startNode(tunnelConfig(store)) }

var benchBody = bytes.Repeat([]byte("x"), 128)

// runTunnel measures produce and consume requests/s at o.Conns
// connections on a node of engine ("memory" or "file", in a temporary
// directory), each against a plain handler and baseline-hello in the same
// round.
func runTunnel(ctx context.Context, o Options, engine string) ([]Figure, error) {
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
	spec := engine
	if engine == "file" {
		dir, err := os.MkdirTemp("", "postern-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		spec = "file:" + filepath.Join(dir, "data")
	}
	n, err := tunnelNode(spec)
	if err != nil {
		return nil, err
	}
	defer n.stop()
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()

	post := func(url string, status int) func(ctx context.Context, w, seq int) error {
		return func(ctx context.Context, w, seq int) error {
			req, _ := http.NewRequestWithContext(ctx, "POST", url+"/t/load-"+strconv.Itoa(w%8), bytes.NewReader(benchBody))
			req.Header.Set("Content-Type", "text/plain")
			return expect(c, req, status)
		}
	}
	get := func(url string, status int) func(ctx context.Context, w, seq int) error {
		return func(ctx context.Context, w, seq int) error {
			req, _ := http.NewRequestWithContext(ctx, "GET", url+"/t/load-"+strconv.Itoa(w%8), nil)
			err := expect(c, req, status)
			var st *statusError
			if errors.As(err, &st) && st.got == http.StatusNoContent {
				return errDrained
			}
			return err
		}
	}
	baseProduce, err := closedLoop(ctx, o.Conns, o.Duration, post(base, 200))
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	helloProduce, err := helloLoad(ctx, o.Conns, o.Duration, post(hello, 200))
	if err != nil {
		return nil, err
	}
	produce, err := closedLoop(ctx, o.Conns, o.Duration, post(n.URL, 201))
	if err != nil {
		return nil, fmt.Errorf("produce: %w", err)
	}
	baseConsume, err := closedLoop(ctx, o.Conns, o.Duration, get(base, 200))
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	helloConsume, err := helloLoad(ctx, o.Conns, o.Duration, get(hello, 200))
	if err != nil {
		return nil, err
	}
	// The produce phase filled the queues; consume drains them. A worker
	// that finds its tunnel empty stops.
	consume, err := closedLoop(ctx, o.Conns, o.Duration, get(n.URL, 200))
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	produceGoal, consumeGoal := 0.85, 0.0
	if engine == "file" {
		produceGoal, consumeGoal = 0.6, 0.5
	}
	return []Figure{
		// Issue 20: produce at 0.85x the cheapest handler on the memory
		// engine, 0.6x on the file engine; consume on the file engine at
		// 0.5x.
		{Name: "produce req/s", Unit: "req/s", Value: produce.Rate(), Baseline: baseProduce.Rate(), Goal: 0.6, Hello: helloProduce.Rate(), HelloGoal: produceGoal},
		{Name: "produce p99", Unit: "ms", Value: ms(produce.Percentile(99)), Baseline: ms(baseProduce.Percentile(99)), LowerIsBetter: true, Hello: ms(helloProduce.Percentile(99))},
		{Name: "consume req/s", Unit: "req/s", Value: consume.Rate(), Baseline: baseConsume.Rate(), Hello: helloConsume.Rate(), HelloGoal: consumeGoal},
		{Name: "consume p99", Unit: "ms", Value: ms(consume.Percentile(99)), Baseline: ms(baseConsume.Percentile(99)), LowerIsBetter: true, Hello: ms(helloConsume.Percentile(99))},
	}, nil
}

// Wake scenario settings.
const (
	wakeRate     = 5000 // messages/s over all tunnels
	wakeTunnels  = 64   // one long-polling consumer each
	wakeProducer = 16   // paced producer goroutines
)

// runTunnelWake measures how long a message takes from the producer's send
// to the answer of a consumer long-polling its tunnel, at wakeRate
// messages/s spread over wakeTunnels tunnels. Each body carries its send
// time.
//
// The node, the plain handler and baseline-hello each run in a child process (the harness
// started again, as for channels), as a deployed server would: in the
// harness's own process the clients' garbage collections and scheduling
// would stop the server too, and on two cores their pauses, not postern,
// made the tail.
func runTunnelWake(ctx context.Context, o Options) ([]Figure, error) {
	base, err := childRoundTrips(ctx, "plain", o.Duration)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	hello, err := childRoundTrips(ctx, "hello", o.Duration)
	if err != nil {
		return nil, fmt.Errorf("baseline-hello: %w", err)
	}
	n, err := startChild("tunnel")
	if err != nil {
		return nil, err
	}
	defer n.stop()
	c := httpClient(wakeTunnels + wakeProducer)
	defer c.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	start := time.Now()
	var (
		mu       sync.Mutex
		lat      []time.Duration
		received atomic.Int64
		sent     atomic.Int64
		// waited counts messages sent before their consumer's poll
		// started: they sat in the queue, not in a waiting long-poll.
		waited   atomic.Int64
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil && ctx.Err() == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for i := range wakeTunnels {
		wg.Go(func() {
			url := n.base + "/t/wake-" + strconv.Itoa(i) + "/poll?timeout=5"
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
				polled := time.Now()
				resp, err := c.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						fail(err)
					}
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				now := time.Now()
				if err != nil || resp.StatusCode != 200 {
					if resp.StatusCode != 204 {
						fail(fmt.Errorf("poll: %d %v", resp.StatusCode, err))
					}
					continue
				}
				sentAt, err := strconv.ParseInt(string(body), 10, 64)
				if err != nil {
					fail(fmt.Errorf("poll body %q", body))
					continue
				}
				received.Add(1)
				if time.Unix(0, sentAt).Before(polled) {
					waited.Add(1)
				}
				mu.Lock()
				if len(lat) < maxSamples {
					lat = append(lat, now.Sub(time.Unix(0, sentAt)))
				}
				mu.Unlock()
			}
		})
	}
	// Paced producers: each sends every wakeProducer/wakeRate seconds, to
	// the tunnels in turn.
	interval := time.Second * wakeProducer / wakeRate
	for p := range wakeProducer {
		wg.Go(func() {
			t := time.NewTicker(interval)
			defer t.Stop()
			for seq := p; ; seq += wakeProducer {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				body := strconv.FormatInt(time.Now().UnixNano(), 10)
				req, _ := http.NewRequestWithContext(ctx, "POST", n.base+"/t/wake-"+strconv.Itoa(seq%wakeTunnels), bytes.NewReader([]byte(body)))
				if err := expect(c, req, 201); err != nil {
					if ctx.Err() == nil {
						fail(err)
					}
					return
				}
				sent.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	elapsed := time.Since(start)
	if len(lat) == 0 {
		return nil, errors.New("no message was delivered")
	}
	r := LoadResult{Latencies: lat, Ops: received.Load(), Elapsed: elapsed}
	wake50, wake99, err := histQuantiles(n.gather, "postern_queue_wake_seconds", 0.5, 0.99)
	if err != nil {
		return nil, err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		{Name: "wake p50", Unit: "ms", Value: ms(r.Percentile(50)), LowerIsBetter: true, Hello: ms(hello.Percentile(50))},
		{Name: "wake p99", Unit: "ms", Value: ms(r.Percentile(99)), LowerIsBetter: true, Goal: 2, Hello: ms(hello.Percentile(99))},
		{Name: "in-server wake p50 (append to long-poll holding it)", Unit: "ms", Value: wake50 * 1000, LowerIsBetter: true},
		{Name: "in-server wake p99", Unit: "ms", Value: wake99 * 1000, LowerIsBetter: true},
		{Name: "one plain HTTP round trip at the same rate, p50", Unit: "ms", Value: ms(base.Percentile(50)), LowerIsBetter: true},
		{Name: "one plain HTTP round trip at the same rate, p99", Unit: "ms", Value: ms(base.Percentile(99)), LowerIsBetter: true},
		{Name: "delivered msg/s", Unit: "msg/s", Value: r.Rate(), Goal: wakeRate * 0.95},
		{Name: "messages sent before their consumer polled", Unit: "msgs", Value: float64(waited.Load()), LowerIsBetter: true},
	}, nil
}

// childRoundTrips runs pacedRoundTrips against a child server of kind.
func childRoundTrips(ctx context.Context, kind string, d time.Duration) (LoadResult, error) {
	c, err := startChild(kind)
	if err != nil {
		return LoadResult{}, err
	}
	defer c.stop()
	return pacedRoundTrips(ctx, c.base, d)
}

// pacedRoundTrips sends wakeRate requests/s from wakeProducer paced
// goroutines to a plain handler and times each round trip: the floor of
// one HTTP exchange at the wake scenario's rate on this machine.
func pacedRoundTrips(ctx context.Context, url string, d time.Duration) (LoadResult, error) {
	c := httpClient(wakeProducer)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu       sync.Mutex
		lat      []time.Duration
		firstErr error
		wg       sync.WaitGroup
	)
	interval := time.Second * wakeProducer / wakeRate
	start := time.Now()
	for range wakeProducer {
		wg.Go(func() {
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				t0 := time.Now()
				req, _ := http.NewRequestWithContext(ctx, "POST", url+"/x", bytes.NewReader([]byte("1764627000000000000")))
				err := expect(c, req, 200)
				el := time.Since(t0)
				mu.Lock()
				if err != nil && ctx.Err() == nil && firstErr == nil {
					firstErr = err
				}
				if err == nil && len(lat) < maxSamples {
					lat = append(lat, el)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return LoadResult{Latencies: lat, Ops: int64(len(lat)), Elapsed: time.Since(start)}, firstErr
}

// gather reads the child's metrics from its /metrics endpoint.
func (c *child) gather() ([]*dto.MetricFamily, error) {
	res, err := http.Get(c.base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", res.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		return nil, fmt.Errorf("/metrics: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(byName))
	for _, mf := range byName {
		out = append(out, mf)
	}
	return out, nil
}

// histQuantiles estimates quantiles of a histogram that gather returns
// (summed over labels) as Prometheus' histogram_quantile does: linear
// within the bucket the rank falls in.
func histQuantiles(gather func() ([]*dto.MetricFamily, error), name string, qs ...float64) (float64, float64, error) {
	mfs, err := gather()
	if err != nil {
		return 0, 0, err
	}
	var bounds []float64
	var counts []uint64
	var total uint64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			total += h.GetSampleCount()
			for i, b := range h.GetBucket() {
				if i >= len(bounds) {
					bounds = append(bounds, b.GetUpperBound())
					counts = append(counts, 0)
				}
				counts[i] += b.GetCumulativeCount()
			}
		}
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("%s: no samples", name)
	}
	q := func(q float64) float64 {
		rank := q * float64(total)
		lower, prev := 0.0, uint64(0)
		for i, c := range counts {
			if float64(c) >= rank {
				return lower + (bounds[i]-lower)*(rank-float64(prev))/float64(c-prev)
			}
			lower, prev = bounds[i], c
		}
		return lower
	}
	return q(qs[0]), q(qs[1]), nil
}
