package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/node"
)

func init() {
	register(Scenario{
		Name:     "inbox",
		Baseline: "tunnel produce (POST /t/<id>, same payload) on the same node, same round",
		Run:      runInboxBench,
	})
}

// inboxPayload is the message body of every inbox and tunnel request: a
// 64-character JSON string.
var inboxPayload = `"` + strings.Repeat("p", 62) + `"`

// runInboxBench measures, on one memory-engine node: tunnel produce (the
// baseline), inbox send, draining what was sent with receive, send then
// receive one message at a time, and exchange carrying one message in and
// out. Each worker has its own inbox, as each tunnel producer its own
// tunnel, so the figures measure the front door, not contention on one key.
func runInboxBench(ctx context.Context, o Options) ([]Figure, error) {
	cfg := node.DefaultConfig()
	cfg.Store = "memory"
	cfg.Tunnel.Backpressure = false // the cap trims instead of refusing
	cfg.Inbox.MaxLen = 10_000_000   // the send phase must not hit 507
	n, err := startNode(cfg)
	if err != nil {
		return nil, err
	}
	defer n.stop()
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()

	post := func(ctx context.Context, path, from, body string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.URL+path, strings.NewReader(body))
		if err != nil {
			return nil, err
		}
		if from != "" {
			req.Header.Set("From", from)
		}
		return c.Do(req)
	}
	// Idempotency keys are unique per phase and worker: each worker
	// counts its own messages (closedLoop's sequence numbers restart with
	// every slice of an interleaved run).
	counters := map[string][]int{"s": make([]int, o.Conns), "p": make([]int, o.Conns), "x": make([]int, o.Conns)}
	envelope := func(phase string, w int, to string) string {
		counters[phase][w]++
		return fmt.Sprintf(`{"idempotencyKey":"%s-%03d-%010d","destination":[%q],"body":%s}`, phase, w, counters[phase][w], to, inboxPayload)
	}
	// entries posts and returns how many entries the JSON array answer held.
	entries := func(ctx context.Context, path, from, body string) (int, error) {
		resp, err := post(ctx, path, from, body)
		if err != nil {
			return 0, err
		}
		defer drain(resp)
		data, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("%s: %d %s", path, resp.StatusCode, bytes.TrimSpace(data))
		}
		var list []json.RawMessage
		if err := json.Unmarshal(data, &list); err != nil {
			return 0, fmt.Errorf("%s: %v", path, err)
		}
		return len(list), nil
	}

	produceOp := func(ctx context.Context, w, _ int) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/t/bench-%d", n.URL, w), strings.NewReader(inboxPayload))
		req.Header.Set("Content-Type", "application/json")
		return expect(c, req, http.StatusCreated)
	}
	sendOp := func(ctx context.Context, w, _ int) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, n.URL+"/inbox/send", strings.NewReader(envelope("s", w, fmt.Sprint("r", w))))
		req.Header.Set("From", fmt.Sprint("s", w))
		return expect(c, req, http.StatusOK)
	}
	pairOp := func(ctx context.Context, w, _ int) error {
		me := fmt.Sprint("p", w)
		resp, err := post(ctx, "/inbox/send", me, envelope("p", w, me))
		if err != nil {
			return err
		}
		drain(resp)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("send: %d", resp.StatusCode)
		}
		// At least the message just sent; more when a slice ended between
		// a send and its receive.
		if k, err := entries(ctx, "/inbox/receive", me, ""); err != nil || k < 1 {
			return fmt.Errorf("receive: %d entries, %v", k, err)
		}
		return nil
	}
	exchangeOp := func(ctx context.Context, w, _ int) error {
		me := fmt.Sprint("x", w)
		if k, err := entries(ctx, "/inbox/exchange", me, envelope("x", w, me)); err != nil || k < 1 {
			return fmt.Errorf("exchange: %d entries, %v", k, err)
		}
		return nil
	}

	produce, send, err := interleaved(ctx, o, produceOp, sendOp)
	if err != nil {
		return nil, fmt.Errorf("inbox send: %w", err)
	}

	// Drain what the send phase stored: every worker receives its inbox
	// until it is empty; the rate is messages over the time to empty all.
	var drained atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, o.Conns)
	start := time.Now()
	for w := range o.Conns {
		wg.Go(func() {
			for ctx.Err() == nil {
				k, err := entries(ctx, "/inbox/receive", fmt.Sprint("r", w), "")
				if err != nil {
					errs <- err
					return
				}
				if k == 0 {
					return
				}
				drained.Add(int64(k))
			}
		})
	}
	wg.Wait()
	drainTime := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return nil, fmt.Errorf("inbox receive: %w", err)
	}
	if drained.Load() < send.Ops {
		return nil, fmt.Errorf("inbox receive: drained %d messages, %d were sent", drained.Load(), send.Ops)
	}
	drainBase, _, err := interleaved(ctx, Options{Duration: o.Duration / 4, Conns: o.Conns}, produceOp, nil)
	if err != nil {
		return nil, fmt.Errorf("tunnel produce: %w", err)
	}

	pairBase, pairs, err := interleaved(ctx, o, produceOp, pairOp)
	if err != nil {
		return nil, fmt.Errorf("inbox send+receive: %w", err)
	}
	exchangeBase, exchange, err := interleaved(ctx, o, produceOp, exchangeOp)
	if err != nil {
		return nil, fmt.Errorf("inbox exchange: %w", err)
	}
	// baseline-hello with a send's request, for the figures of one request
	// per operation.
	helloURL, stopHello, err := startHello()
	if err != nil {
		return nil, err
	}
	defer stopHello()
	sample := []byte(fmt.Sprintf(`{"idempotencyKey":"h-000-%010d","destination":["r0"],"body":%s}`, 0, inboxPayload))
	hello, err := helloLoad(ctx, o.Conns, o.Duration/2, requestOp(c, http.MethodPost, helloURL+"/inbox/send", sample, http.StatusOK))
	if err != nil {
		return nil, err
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		{Name: "send req/s", Unit: "req/s", Value: send.Rate(), Baseline: produce.Rate(), Hello: hello.Rate()},
		{Name: "send p50", Unit: "ms", Value: ms(send.Percentile(50)), Baseline: ms(produce.Percentile(50)), LowerIsBetter: true, Hello: ms(hello.Percentile(50))},
		{Name: "send p99", Unit: "ms", Value: ms(send.Percentile(99)), Baseline: ms(produce.Percentile(99)), LowerIsBetter: true, Hello: ms(hello.Percentile(99))},
		{Name: "receive drain msg/s (batches of 100)", Unit: "msg/s", Value: float64(drained.Load()) / drainTime.Seconds(), Baseline: drainBase.Rate()},
		{Name: "send+receive msg/s (2 requests each)", Unit: "msg/s", Value: pairs.Rate(), Baseline: pairBase.Rate()},
		{Name: "exchange msg/s (in and out, 1 request)", Unit: "msg/s", Value: exchange.Rate(), Baseline: exchangeBase.Rate(), Hello: hello.Rate()},
	}, nil
}

// interleavedSlices is how many alternating slices interleaved runs.
const interleavedSlices = 4

// interleaved measures base and op in alternating slices of o.Duration
// split interleavedSlices ways each, so that the load of the machine
// (other builds share it) weighs on both alike. A nil op measures base
// alone.
func interleaved(ctx context.Context, o Options, base, op func(ctx context.Context, worker, seq int) error) (LoadResult, LoadResult, error) {
	var b, m LoadResult
	slice := o.Duration / interleavedSlices
	for range interleavedSlices {
		r, err := closedLoop(ctx, o.Conns, slice, base)
		if err != nil {
			return b, m, fmt.Errorf("tunnel produce: %w", err)
		}
		b = merge(b, r)
		if op == nil {
			continue
		}
		r, err = closedLoop(ctx, o.Conns, slice, op)
		if err != nil {
			return b, m, err
		}
		m = merge(m, r)
	}
	return b, m, nil
}

func merge(a, b LoadResult) LoadResult {
	a.Ops += b.Ops
	a.Errors += b.Errors
	a.Elapsed += b.Elapsed
	a.Latencies = append(a.Latencies, b.Latencies...)
	return a
}
