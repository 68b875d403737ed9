package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"time"

	"github.com/postern/postern/internal/gcrrelay/gcrclient"
	"github.com/postern/postern/internal/server"
)

func init() {
	register(Scenario{
		Name: "relay",
		Baseline: "the same backend reached directly, same client, same connections; " +
			"the 'vs chain' figure: through 3 chained httputil.ReverseProxy, the same 4 HTTP exchanges per request as the protocol",
		Run: runRelay,
	})
	register(Scenario{
		Name: "relay-stream",
		Baseline: "the same download straight from the backend, same client; " +
			"the 'vs chain' figure: through 2 chained httputil.ReverseProxy, the same 3 transfers of every byte as the protocol",
		Run: runRelayStream,
	})
}

// proxyChain starts n httputil.ReverseProxy in a row in front of target
// and returns the URL of the first.
func proxyChain(target string, n int) (string, func(), error) {
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	for range n {
		u, err := url.Parse(target)
		if err != nil {
			stop()
			return "", nil, err
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
		next, s, err := startHTTP(rp)
		if err != nil {
			stop()
			return "", nil, err
		}
		stops = append(stops, s)
		target = next
	}
	return target, stop, nil
}

// relaySetup is a backend, a node, and a relay client serving the backend
// through the node under the name "bench".
type relaySetup struct {
	backend string
	node    *node
	stop    func()
}

func startRelay(ctx context.Context, h http.Handler, o gcrclient.Options) (*relaySetup, error) {
	backend, stopBackend, err := startHTTP(h)
	if err != nil {
		return nil, err
	}
	n, err := startNode(server.DefaultConfig())
	if err != nil {
		stopBackend()
		return nil, err
	}
	o.RelayURL, o.ServerName, o.BackendURL = n.URL, "bench", backend
	pending := max(o.NumPendingRequests, 1)
	o.Relay = httpClient(pending * 2)
	o.Backend = httpClient(pending * 2)
	rc, err := gcrclient.New(o)
	if err != nil {
		n.stop()
		stopBackend()
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rc.Run(rctx) }()
	stop := func() {
		cancel()
		<-done
		n.stop()
		stopBackend()
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := n.srv.WaitForRelayPolls(wctx, "bench", pending); err != nil {
		stop()
		return nil, err
	}
	return &relaySetup{backend: backend, node: n, stop: stop}, nil
}

// runRelay measures small requests per second through the relay against
// the same backend reached directly. The relay client keeps one poll
// parked per user connection, as a relay client sized for the load would.
func runRelay(ctx context.Context, o Options) ([]Figure, error) {
	answer := []byte("ok")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", "2")
		w.Write(answer)
	})
	rs, err := startRelay(ctx, h, gcrclient.Options{NumPendingRequests: o.Conns})
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()
	get := func(url string) func(ctx context.Context, w, seq int) error {
		return func(ctx context.Context, w, seq int) error {
			req, _ := http.NewRequestWithContext(ctx, "GET", url+"/items/"+strconv.Itoa(seq), nil)
			return expect(c, req, 200)
		}
	}
	chain, stopChain, err := proxyChain(rs.backend, 3)
	if err != nil {
		return nil, err
	}
	defer stopChain()
	direct, err := closedLoop(ctx, o.Conns, o.Duration, get(rs.backend))
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	relayed, err := closedLoop(ctx, o.Conns, o.Duration, get(rs.node.URL+"/client/bench"))
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	chained, err := closedLoop(ctx, o.Conns, o.Duration, get(chain))
	if err != nil {
		return nil, fmt.Errorf("chain: %w", err)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		{Name: "req/s", Unit: "req/s", Value: relayed.Rate(), Baseline: direct.Rate(), Goal: 0.25},
		{Name: "req/s vs chain", Unit: "req/s", Value: relayed.Rate(), Baseline: chained.Rate()},
		{Name: "p50", Unit: "ms", Value: ms(relayed.Percentile(50)), Baseline: ms(direct.Percentile(50)), LowerIsBetter: true},
		{Name: "p99", Unit: "ms", Value: ms(relayed.Percentile(99)), Baseline: ms(direct.Percentile(99)), LowerIsBetter: true},
	}, nil
}

// Stream scenario: one download of streamBytes, in the relay client's
// chunks of streamChunk.
const (
	streamBytes = 512 << 20
	streamChunk = 4 << 20
)

// runRelayStream measures the throughput of one large download through the
// relay against the same download straight from the backend.
func runRelayStream(ctx context.Context, o Options) ([]Figure, error) {
	block := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(streamBytes))
		for sent := 0; sent < streamBytes; sent += len(block) {
			if _, err := w.Write(block); err != nil {
				return
			}
		}
	})
	rs, err := startRelay(ctx, h, gcrclient.Options{MaxChunkSize: streamChunk, BlockSize: 1 << 20})
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	c := httpClient(1)
	defer c.CloseIdleConnections()
	download := func(url string) (float64, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		t0 := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 1<<20))
		if err != nil {
			return 0, err
		}
		if n != streamBytes {
			return 0, errors.New("short download")
		}
		return float64(n) / (1 << 20) / time.Since(t0).Seconds(), nil
	}
	chain, stopChain, err := proxyChain(rs.backend, 2)
	if err != nil {
		return nil, err
	}
	defer stopChain()
	direct, err := download(rs.backend + "/big")
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	relayed, err := download(rs.node.URL + "/client/bench/big")
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	chained, err := download(chain + "/big")
	if err != nil {
		return nil, fmt.Errorf("chain: %w", err)
	}
	return []Figure{
		{Name: "one-stream MB/s", Unit: "MB/s", Value: relayed, Baseline: direct, Goal: 0.5},
		{Name: "one-stream MB/s vs chain", Unit: "MB/s", Value: relayed, Baseline: chained},
	}, nil
}
