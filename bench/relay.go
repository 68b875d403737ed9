package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/postern/postern/internal/node"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
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

// profileDir, when set, receives a CPU profile of the postern phase of the
// relay and expose scenarios (the harness, node, relay client or agent, and
// backend all run in this process), one file per scenario and round
// (go tool pprof merges several).
var profileDir = flag.String("profile", "", "write CPU profiles of the relay and expose scenarios' postern phases to this `dir`")

var profileRounds = map[string]int{}

// profiled runs f, under a CPU profile written to <profile>/<name>-<round>.pprof
// when -profile is set.
func profiled(name string, f func() error) error {
	if *profileDir == "" {
		return f()
	}
	profileRounds[name]++
	out, err := os.Create(filepath.Join(*profileDir, fmt.Sprintf("%s-%d.pprof", name, profileRounds[name])))
	if err != nil {
		return err
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	return f()
}

// labelPart labels the calling goroutine, and the goroutines it starts,
// as part of the setup named part.
func labelPart(ctx context.Context, part string) {
	pprof.SetGoroutineLabels(pprof.WithLabels(ctx, pprof.Labels("part", part)))
}

// cpuTime is the CPU time (user and system) this process has used: the
// harness, node, relay client or agent, and backend together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measured is a closed-loop phase with the CPU time it used per operation,
// which other work on the machine disturbs less than the rate.
func measured(ctx context.Context, conns int, d time.Duration, op func(ctx context.Context, worker, seq int) error) (LoadResult, float64, error) {
	c0 := cpuTime()
	r, err := closedLoop(ctx, conns, d, op)
	us := 0.0
	if r.Ops > 0 {
		us = float64(cpuTime()-c0) / float64(time.Microsecond) / float64(r.Ops)
	}
	return r, us, err
}

// readAll reads r to its end with reads of len(buf) and returns how many
// bytes it read: a download client that reads in large blocks.
// (io.CopyBuffer to io.Discard would ignore buf: io.Discard reads through
// its own 8 KiB buffer.)
func readAll(r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
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
	node    *benchNode
	stop    func()
}

func startRelay(ctx context.Context, h http.Handler, o gcrclient.Options) (*relaySetup, error) {
	// The goroutines started from here on inherit a label naming their
	// part, so that a profile splits by part (pprof -tagfocus part=node).
	defer labelPart(ctx, "harness")
	labelPart(ctx, "backend")
	backend, stopBackend, err := startHTTP(h)
	if err != nil {
		return nil, err
	}
	labelPart(ctx, "node")
	n, err := startNode(node.DefaultConfig())
	labelPart(ctx, "relayclient")
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
	direct, directCPU, err := measured(ctx, o.Conns, o.Duration, get(rs.backend))
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	helloURL, stopHello, err := startHello()
	if err != nil {
		return nil, err
	}
	defer stopHello()
	hello, helloCPU, err := measured(ctx, o.Conns, o.Duration, get(helloURL))
	if err != nil {
		return nil, fmt.Errorf("baseline-hello: %w", err)
	}
	var relayed LoadResult
	var relayedCPU float64
	err = profiled("relay", func() (err error) {
		relayed, relayedCPU, err = measured(ctx, o.Conns, o.Duration, get(rs.node.URL+"/client/bench"))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	chained, chainedCPU, err := measured(ctx, o.Conns, o.Duration, get(chain))
	if err != nil {
		return nil, fmt.Errorf("chain: %w", err)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		{Name: "req/s", Unit: "req/s", Value: relayed.Rate(), Baseline: direct.Rate(), Goal: 0.25, Hello: hello.Rate()},
		{Name: "req/s vs chain", Unit: "req/s", Value: relayed.Rate(), Baseline: chained.Rate()},
		{Name: "CPU per req", Unit: "us", Value: relayedCPU, Baseline: directCPU, LowerIsBetter: true, Hello: helloCPU},
		{Name: "CPU per req vs chain", Unit: "us", Value: relayedCPU, Baseline: chainedCPU, LowerIsBetter: true},
		{Name: "p50", Unit: "ms", Value: ms(relayed.Percentile(50)), Baseline: ms(direct.Percentile(50)), LowerIsBetter: true, Hello: ms(hello.Percentile(50))},
		{Name: "p99", Unit: "ms", Value: ms(relayed.Percentile(99)), Baseline: ms(direct.Percentile(99)), LowerIsBetter: true, Hello: ms(hello.Percentile(99))},
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
	// The relay client posts large chunks in chunked encoding, written
	// from where they lie (see gcrclient.Options.ChunkedPosts).
	rs, err := startRelay(ctx, h, gcrclient.Options{MaxChunkSize: streamChunk, BlockSize: 1 << 20, ChunkedPosts: true})
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	c := httpClient(1)
	defer c.CloseIdleConnections()
	// download returns MB/s and the CPU time used per MB.
	download := func(url string) (float64, float64, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		t0, c0 := time.Now(), cpuTime()
		resp, err := c.Do(req)
		if err != nil {
			return 0, 0, err
		}
		defer resp.Body.Close()
		n, err := readAll(resp.Body, make([]byte, 1<<20))
		if err != nil {
			return 0, 0, err
		}
		if n != streamBytes {
			return 0, 0, errors.New("short download")
		}
		mb := float64(n) / (1 << 20)
		return mb / time.Since(t0).Seconds(), float64(cpuTime()-c0) / float64(time.Microsecond) / mb, nil
	}
	chain, stopChain, err := proxyChain(rs.backend, 2)
	if err != nil {
		return nil, err
	}
	defer stopChain()
	direct, directCPU, err := download(rs.backend + "/big")
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	var relayed, relayedCPU float64
	err = profiled("relay-stream", func() (err error) {
		relayed, relayedCPU, err = download(rs.node.URL + "/client/bench/big")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	chained, chainedCPU, err := download(chain + "/big")
	if err != nil {
		return nil, fmt.Errorf("chain: %w", err)
	}
	return []Figure{
		{Name: "one-stream MB/s", Unit: "MB/s", Value: relayed, Baseline: direct, Goal: 0.5},
		{Name: "one-stream MB/s vs chain", Unit: "MB/s", Value: relayed, Baseline: chained},
		{Name: "CPU per MB", Unit: "us", Value: relayedCPU, Baseline: directCPU, LowerIsBetter: true},
		{Name: "CPU per MB vs chain", Unit: "us", Value: relayedCPU, Baseline: chainedCPU, LowerIsBetter: true},
	}, nil
}
