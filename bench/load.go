package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/node"
)

// LoadResult is what a closed-loop load phase measured.
type LoadResult struct {
	Ops     int64
	Errors  int64
	Elapsed time.Duration
	// Latencies is a sample of per-operation latencies (every operation
	// while the sample is small, then a uniform subset).
	Latencies []time.Duration
	FirstErr  error
}

// Rate is operations per second.
func (r LoadResult) Rate() float64 { return float64(r.Ops) / r.Elapsed.Seconds() }

// Percentile returns the p-th percentile (0-100) of the sampled latencies.
func (r LoadResult) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	s := slices.Clone(r.Latencies)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

const maxSamples = 200_000

// errDrained, returned by an operation, ends its worker's phase early
// without counting the operation: there is nothing left to do (a consumer
// found its queue empty).
var errDrained = errors.New("drained")

// closedLoop runs conns workers for d; each calls op back to back. op gets
// its worker number and a per-worker sequence number. The phase fails when
// more than 1% of operations fail.
func closedLoop(ctx context.Context, conns int, d time.Duration, op func(ctx context.Context, worker, seq int) error) (LoadResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var ops, errs atomic.Int64
	var mu sync.Mutex
	var firstErr error
	lat := make([][]time.Duration, conns)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conns {
		wg.Go(func() {
			samples := make([]time.Duration, 0, maxSamples/conns)
			for seq := 0; ctx.Err() == nil; seq++ {
				t0 := time.Now()
				err := op(ctx, w, seq)
				if ctx.Err() != nil {
					break // the phase ended mid-operation: not counted
				}
				if errors.Is(err, errDrained) {
					break
				}
				if err != nil {
					errs.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				ops.Add(1)
				if len(samples) < cap(samples) {
					samples = append(samples, time.Since(t0))
				}
			}
			lat[w] = samples
		})
	}
	wg.Wait()
	r := LoadResult{Ops: ops.Load(), Errors: errs.Load(), Elapsed: time.Since(start), Latencies: slices.Concat(lat...), FirstErr: firstErr}
	if r.Errors*100 > r.Ops+r.Errors {
		return r, fmt.Errorf("%d of %d operations failed; first: %v", r.Errors, r.Ops+r.Errors, firstErr)
	}
	return r, nil
}

// httpClient returns a client that keeps up to conns connections to one
// host open.
func httpClient(conns int) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        conns * 2,
		MaxIdleConnsPerHost: conns * 2,
		MaxConnsPerHost:     conns * 2,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	return &http.Client{Transport: tr}
}

// drain reads and closes a response body so the connection is reused.
func drain(resp *http.Response) {
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// expect sends req and checks the status.
func expect(c *http.Client, req *http.Request, status int) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != status {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return &statusError{req: req.Method + " " + req.URL.Path, got: resp.StatusCode, want: status, body: string(body)}
	}
	return nil
}

// statusError is an answer with another status than expected.
type statusError struct {
	req       string
	got, want int
	body      string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s: %d %s, want %d", e.req, e.got, e.body, e.want)
}

// startHTTP serves h on a loopback port; stop closes it.
func startHTTP(h http.Handler) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	return "http://" + ln.Addr().String(), func() {
		srv.Close()
		<-done
	}, nil
}

// plainHandler is the machine's HTTP ceiling: it reads the body and answers
// 200 with nothing.
var plainHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.WriteHeader(http.StatusOK)
})

// benchNode is a postern node started by the harness.
type benchNode struct {
	URL string
	srv *node.Node
	ln  net.Listener
	out chan error
}

// startNode runs a postern node with cfg on a loopback port.
func startNode(cfg node.Config) (*benchNode, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv, err := node.New(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Shutdown(context.Background())
		return nil, err
	}
	n := &benchNode{URL: "http://" + ln.Addr().String(), srv: srv, ln: ln, out: make(chan error, 1)}
	go func() { n.out <- srv.Serve(ln) }()
	return n, nil
}

// stop shuts the node down.
func (n *benchNode) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := n.srv.Shutdown(ctx)
	return errors.Join(err, <-n.out)
}
