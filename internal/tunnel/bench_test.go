package tunnel_test

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/servertest"
)

// benchWriter is the least a ResponseWriter does, so that the benchmark
// counts the node's work and allocations rather than a recorder's.
type benchWriter struct {
	h    http.Header
	code int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *benchWriter) WriteHeader(code int)        { w.code = code }

// SetReadDeadline succeeds, as net/http's does (an unsupported one costs
// an error's allocation per request).
func (w *benchWriter) SetReadDeadline(time.Time) error { return nil }

// BenchmarkProduceHandler is one tunnel produce (a 128-byte text/plain
// body, as bench's tunnel scenarios send) through the node's whole
// handler chain on the memory engine, without the network: the CPU and
// allocations postern adds to net/http's own per request, about 3 µs of
// the 30-35 µs a produce costs under wrk.
//
// The rest is mostly net/http's and the heap's. Plain net/http handlers
// loaded by wrk beside baseline-hello, two runs of six 2-second slices at
// load 3.5-3.9 (2026-12-08), CPU per request and rate against it:
// baseline-hello 21.0 µs; reading the body under a deadline and answering
// the produce's 201 and headers 23.9-25.1 µs, 0.85-0.92x; the same keeping
// its body and one 128-byte record per request (what the memory engine
// keeps) 26.6-27.4 µs, 0.84-0.86x; the node 30.0-30.2 µs, 0.74-0.77x. On
// this VM a fresh 4 KB page costs 5-10 µs of CPU when first touched, and
// under heavier load (8-12) keeping the messages weighed more: perf put
// the keeping handler's extra in page faults (1.8 against 0.3 µs per
// request), the response's write (10.0 against 7.6 µs) and request
// parsing (6.2 against 4.3 µs), the same functions that made up the
// node's gap to baseline-hello outside its handler. Those plain handlers
// were scratch code; the keeping one is measured in every run as bench's
// baseline-store (`go run ./bench -run '^tunnel/wrk$'`).
func BenchmarkProduceHandler(b *testing.B) {
	cfg := servertest.Config()
	cfg.Tunnel.MaxLen = 10_000_000
	n := servertest.Start(b, cfg)
	h := n.Handler()
	body := []byte(strings.Repeat("x", 128))
	urls := make([]*url.URL, 8)
	for i := range urls {
		urls[i] = &url.URL{Path: "/t/load-" + string(rune('0'+i))}
	}
	rd := bytes.NewReader(body)
	w := &benchWriter{h: make(http.Header)}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		rd.Reset(body)
		r := &http.Request{
			Method: http.MethodPost, URL: urls[i%8], Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:        http.Header{"Content-Type": {"text/plain"}},
			Body:          io.NopCloser(rd),
			ContentLength: int64(len(body)), Host: "127.0.0.1", RemoteAddr: "127.0.0.1:1234",
		}
		clear(w.h)
		h.ServeHTTP(w, r.WithContext(b.Context()))
		if w.code != http.StatusCreated {
			b.Fatalf("status %d", w.code)
		}
		i++
	}
}
