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
// Most of the rest is the memory a stored message keeps (about 290 bytes:
// body, index entry), not code. On the 2-core bench machine (a VM) a fresh
// 4 KB page costs 5-10 µs of CPU (about 30 µs of wall time) when first
// touched, and a process whose heap grows also pays more in every write
// and request parse. A plain net/http handler that reads the body under a
// deadline and answers the produce's status and headers ran at 0.82x
// baseline-hello; the same handler keeping its body and one 128-byte
// record per request, 0.67x; the node, 0.72x (one wrk run of 2-second
// slices, 2026-12-07, load 12). perf of the two plain handlers put the
// difference in page faults (1.8 against 0.3 µs per request), fresh
// spans, the response's write (10.0 against 7.6 µs) and request parsing
// (6.2 against 4.3 µs): the same functions that made up the node's gap
// to baseline-hello outside its handler.
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
