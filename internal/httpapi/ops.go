package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyFunc reports why the server cannot take traffic, or nil when it can.
type ReadyFunc func(ctx context.Context) error

// MountOps adds /healthz (the process is up), /readyz (ready reports nil)
// and /metrics (gather's metrics in the Prometheus text format) to rt, as
// Ops routes.
func MountOps(rt *Routes, ready ReadyFunc, gather prometheus.Gatherer) {
	rt.Add(Route{Pattern: "/healthz", Ops: true, Handler: Handle(func(w http.ResponseWriter, r *http.Request) error {
		SetRoute(w, "ops.healthz")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, err := w.Write([]byte("ok"))
		return err
	}, nil)})
	rt.Add(Route{Pattern: "/readyz", Ops: true, Handler: Handle(func(w http.ResponseWriter, r *http.Request) error {
		SetRoute(w, "ops.readyz")
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			return Errorf(http.StatusServiceUnavailable, "not ready: %v", err)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, err := w.Write([]byte("ok"))
		return err
	}, nil)})
	metrics := promhttp.HandlerFor(gather, promhttp.HandlerOpts{})
	rt.Add(Route{Pattern: "/metrics", Ops: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		SetRoute(w, "ops.metrics")
		metrics.ServeHTTP(w, r)
	})})
}
