package httpapi_test

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
)

// nopWriter is the least a ResponseWriter does.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *nopWriter) WriteHeader(int)             {}

// BenchmarkWrap is the request middleware alone, from parallel
// goroutines as a loaded node runs it: a handler that names its route and
// answers 201.
func BenchmarkWrap(b *testing.B) {
	m := httpapi.NewMetrics(capability.Deps{Registry: prometheus.NewRegistry(), Logger: capability.Discard().Logger})
	h := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.SetRoute(w, "bench.produce")
		w.WriteHeader(http.StatusCreated)
	}))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &nopWriter{h: make(http.Header)}
		r := &http.Request{Method: http.MethodPost, URL: &url.URL{Path: "/t/x"}, Header: http.Header{}}
		r = r.WithContext(b.Context())
		for pb.Next() {
			h.ServeHTTP(w, r)
		}
	})
}
