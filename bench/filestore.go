package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/internal/node"
)

// The file engine's durable produce against the memory engine, both over
// HTTP on the tunnels front door, in alternating slices of the same round:
// the price of a 2xx that means "on disk".
func init() {
	register(Scenario{
		Name:     "filestore/produce",
		Baseline: "the same produce on a memory-engine node, in alternating slices",
		Run:      runFilestoreProduce,
	})
}

// fileBenchBody is a 204-byte webhook-like JSON body.
var fileBenchBody = strings.Repeat(`{"event":"push","ref":"refs/heads/main","n":12345}`, 4)

// startProduceNode runs a node on storeSpec for a produce phase.
func startProduceNode(storeSpec string) (*benchNode, error) {
	cfg := node.DefaultConfig()
	cfg.Store = storeSpec
	cfg.Listen = "127.0.0.1:0"
	cfg.Tunnel.MaxLen = 100_000_000 // the phase measures appends, not backpressure
	return startNode(cfg)
}

// produceOp posts fileBenchBody to one of tunnels tunnels of the node at url.
func produceOp(c *http.Client, url string, tunnels int) func(ctx context.Context, w, seq int) error {
	return func(ctx context.Context, w, seq int) error {
		req, err := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("%s/t/bench-%d", url, w%tunnels), strings.NewReader(fileBenchBody))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		return expect(c, req, http.StatusCreated)
	}
}

func runFilestoreProduce(ctx context.Context, o Options) ([]Figure, error) {
	dir, err := os.MkdirTemp("", "postern-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	var figs []Figure
	for i, tc := range []struct {
		name    string
		tunnels int
	}{{"one tunnel per conn", o.Conns}, {"one shared tunnel", 1}} {
		mem, err := startProduceNode("memory")
		if err != nil {
			return nil, err
		}
		file, err := startProduceNode(fmt.Sprintf("file:%s/data-%d", dir, i))
		if err != nil {
			mem.stop()
			return nil, err
		}
		c := httpClient(o.Conns)
		memRes, fileRes, err := interleaved(ctx, o, produceOp(c, mem.URL, tc.tunnels), produceOp(c, file.URL, tc.tunnels))
		var hello LoadResult
		if err == nil {
			hello, err = helloProduce(ctx, o, c)
		}
		c.CloseIdleConnections()
		if serr := mem.stop(); err == nil {
			err = serr
		}
		if serr := file.stop(); err == nil {
			err = serr
		}
		if err != nil {
			return nil, err
		}
		figs = append(figs,
			// Issue 20: durable produce at 0.6x the cheapest handler.
			Figure{Name: "durable produce req/s, " + tc.name, Unit: "req/s", Value: fileRes.Rate(), Baseline: memRes.Rate(), Goal: 0.5, Hello: hello.Rate(), HelloGoal: 0.6},
			Figure{Name: "durable produce p99, " + tc.name, Unit: "ms", Value: ms(fileRes.Percentile(99)), Baseline: ms(memRes.Percentile(99)), LowerIsBetter: true, Hello: ms(hello.Percentile(99))},
		)
	}
	return figs, nil
}

// helloProduce measures baseline-hello with the produce phase's request
// (fileBenchBody posted as JSON), for half of o.Duration.
func helloProduce(ctx context.Context, o Options, c *http.Client) (LoadResult, error) {
	url, stop, err := startHello()
	if err != nil {
		return LoadResult{}, err
	}
	defer stop()
	return helloLoad(ctx, o.Conns, o.Duration/2, func(ctx context.Context, w, seq int) error {
		req, err := http.NewRequestWithContext(ctx, "POST", url+"/t/bench", strings.NewReader(fileBenchBody))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		return expect(c, req, http.StatusOK)
	})
}
