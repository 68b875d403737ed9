package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/internal/server"
)

// The file engine's durable produce against the memory engine, both over
// HTTP on the tunnels front door, in the same round: the price of a 2xx
// that means "on disk".
func init() {
	register(Scenario{
		Name:     "filestore/produce",
		Baseline: "the same produce on the memory engine",
		Run:      runFilestoreProduce,
	})
}

// producePhase runs a closed loop of produces to conns tunnels (one per
// connection) on a node with the given store, and returns the result.
func producePhase(ctx context.Context, o Options, storeSpec string, tunnels int) (LoadResult, error) {
	cfg := server.DefaultConfig()
	cfg.Store = storeSpec
	cfg.Listen = "127.0.0.1:0"
	cfg.Tunnel.MaxLen = 100_000_000 // the phase measures appends, not backpressure
	n, err := startNode(cfg)
	if err != nil {
		return LoadResult{}, err
	}
	defer n.stop()
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()
	body := strings.Repeat(`{"event":"push","ref":"refs/heads/main","n":12345}`, 4) // 204 bytes
	return closedLoop(ctx, o.Conns, o.Duration, func(ctx context.Context, w, seq int) error {
		req, err := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("%s/t/bench-%d", n.URL, w%tunnels), strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		return expect(c, req, http.StatusCreated)
	})
}

func runFilestoreProduce(ctx context.Context, o Options) ([]Figure, error) {
	dir, err := os.MkdirTemp("", "postern-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var figs []Figure
	for _, tc := range []struct {
		name    string
		tunnels int
	}{{"one tunnel per conn", o.Conns}, {"one shared tunnel", 1}} {
		mem, err := producePhase(ctx, o, "memory", tc.tunnels)
		if err != nil {
			return nil, fmt.Errorf("memory: %w", err)
		}
		sub, err := os.MkdirTemp(dir, "data-")
		if err != nil {
			return nil, err
		}
		file, err := producePhase(ctx, o, "file:"+sub, tc.tunnels)
		if err != nil {
			return nil, fmt.Errorf("file: %w", err)
		}
		figs = append(figs,
			Figure{Name: "durable produce req/s, " + tc.name, Unit: "req/s", Value: file.Rate(), Baseline: mem.Rate(), Goal: 0.5},
			Figure{Name: "durable produce p99, " + tc.name, Unit: "ms", Value: ms(file.Percentile(99)), Baseline: ms(mem.Percentile(99)), LowerIsBetter: true},
		)
	}
	return figs, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
