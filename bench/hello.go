package main

// baseline-hello is the cheapest Go handler: it answers every request with
// a short constant body and leaves the request body to net/http. It is
// what a user compares a server with, so every scenario that measures
// HTTP requests (tunnel, tunnel-wake, inbox, relay, expose,
// expose-brickchain, filestore/produce) also measures it in the same
// round, with the same client, connections and requests, and sets
// Figure.Hello: the table then shows those figures a second time, as
// "<figure> vs baseline-hello", next to the scenario's own baseline.
// Figures that are not one HTTP request per operation (downloads, batched
// receives, websocket fan-out, Redis ceilings) have no such row.
//
// The baseline-hello scenario measures the handler itself, against the
// plain handler that the tunnel scenario uses (which reads the body): what
// reading the body costs, and the absolute figures of the cheapest handler
// on this machine.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"time"
)

// helloLegend is the "baseline is" text of the rows against baseline-hello.
const helloLegend = "baseline-hello: the cheapest Go handler (a constant answer), same client, connections and requests, same round"

func init() {
	register(Scenario{
		Name:     "baseline-hello",
		Baseline: "the plain handler (reads the body, answers 200 empty: the tunnel scenario's baseline), in alternating slices",
		Run:      runHello,
	})
}

// helloAnswer is baseline-hello's whole answer.
var helloAnswer = []byte("hello\n")

// helloHandler is baseline-hello. It does not read the body: net/http
// discards a small one itself to reuse the connection.
var helloHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Write(helloAnswer)
})

// startHello serves baseline-hello on a loopback port of this process.
func startHello() (url string, stop func(), err error) { return startHTTP(helloHandler) }

// requestOp is a closed-loop operation: method url with body (none when
// nil), expecting status.
func requestOp(c *http.Client, method, url string, body []byte, status int) func(ctx context.Context, w, seq int) error {
	return func(ctx context.Context, w, seq int) error {
		var req *http.Request
		if body == nil {
			req, _ = http.NewRequestWithContext(ctx, method, url, nil)
		} else {
			req, _ = http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
			req.Header.Set("Content-Type", "text/plain")
		}
		return expect(c, req, status)
	}
}

// helloLoad measures baseline-hello for d with op's requests sent to url
// (a started baseline-hello).
func helloLoad(ctx context.Context, conns int, d time.Duration, op func(ctx context.Context, w, seq int) error) (LoadResult, error) {
	r, err := closedLoop(ctx, conns, d, op)
	if err != nil {
		return r, fmt.Errorf("baseline-hello: %w", err)
	}
	return r, nil
}

// runHello measures baseline-hello against the plain handler, GET and
// POST of benchBody, in alternating slices.
func runHello(ctx context.Context, o Options) ([]Figure, error) {
	hello, stopHello, err := startHello()
	if err != nil {
		return nil, err
	}
	defer stopHello()
	plain, stopPlain, err := startHTTP(plainHandler)
	if err != nil {
		return nil, err
	}
	defer stopPlain()
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	var figs []Figure
	for _, k := range []struct {
		name, method string
		body         []byte
	}{{"GET", http.MethodGet, nil}, {fmt.Sprintf("POST %d B", len(benchBody)), http.MethodPost, benchBody}} {
		var h, p LoadResult
		slice := o.Duration / interleavedSlices
		for range interleavedSlices {
			r, err := helloLoad(ctx, o.Conns, slice, requestOp(c, k.method, hello+"/hello", k.body, http.StatusOK))
			if err != nil {
				return nil, err
			}
			h = merge(h, r)
			r, err = closedLoop(ctx, o.Conns, slice, requestOp(c, k.method, plain+"/hello", k.body, http.StatusOK))
			if err != nil {
				return nil, fmt.Errorf("plain handler: %w", err)
			}
			p = merge(p, r)
		}
		figs = append(figs,
			Figure{Name: k.name + " req/s", Unit: "req/s", Value: h.Rate(), Baseline: p.Rate()},
			Figure{Name: k.name + " p50", Unit: "ms", Value: ms(h.Percentile(50)), Baseline: ms(p.Percentile(50)), LowerIsBetter: true},
			Figure{Name: k.name + " p99", Unit: "ms", Value: ms(h.Percentile(99)), Baseline: ms(p.Percentile(99)), LowerIsBetter: true},
		)
	}
	return figs, nil
}
