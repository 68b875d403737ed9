package relay

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/capability"
)

// hubMetrics are a hub's measurements, labelled by its namespace (a
// constant label, so every hub of a node registers its own on the node's
// one registry):
//
//	postern_relay_backends{namespace}                     backends connected to this node
//	postern_relay_requests_total{namespace,via,outcome}   relayed requests by outcome
//	postern_relay_bytes_total{namespace,direction}        body bytes, "up" to backends, "down" to users
//	postern_relay_request_duration_seconds{namespace,via} time from request to the end of the response
//
// via is "local" (served by a backend on this node) or "forwarded" (sent to
// another node). outcome is one of ok, upgraded, no_backend, error (the
// relay failed before the response started: timeouts, backend errors),
// aborted (the response was cut mid-stream), canceled (the user went away)
// and refused (the hub was shutting down).
type hubMetrics struct {
	backends prometheus.Gauge
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	duration *prometheus.HistogramVec

	// The series every relay touches, looked up once (a lookup hashes
	// and checks the label values: a few percent of a small relay's
	// CPU), on first use so that the series appear as before.
	viaOutcome [2][len(outcomes)]lazy[prometheus.Counter]
	viaTime    [2]lazy[prometheus.Observer]
	up, down   lazy[prometheus.Counter]
}

// vias and outcomes are the label values the hub uses.
var (
	vias     = [2]string{"local", "forwarded"}
	outcomes = [...]string{"ok", "upgraded", "no_backend", "error", "aborted", "canceled", "refused"}
)

// lazy is a series looked up on first use.
type lazy[T any] struct {
	once sync.Once
	v    T
}

func (l *lazy[T]) get(f func() T) T {
	l.once.Do(func() { l.v = f() })
	return l.v
}

func newMetrics(deps capability.Deps, ns string) *hubMetrics {
	l := prometheus.Labels{"namespace": ns}
	m := &hubMetrics{
		backends: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "postern_relay_backends",
			Help:        "Backends connected to this node, by namespace (relay, expose).",
			ConstLabels: l,
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "postern_relay_requests_total",
			Help:        "Relayed user requests, by namespace, route (local or forwarded) and outcome.",
			ConstLabels: l,
		}, []string{"via", "outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "postern_relay_bytes_total",
			Help:        "Relayed body bytes, by namespace and direction (up: to backends, down: to users).",
			ConstLabels: l,
		}, []string{"direction"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "postern_relay_request_duration_seconds",
			Help:        "Time from a user request to the end of its relayed response, by namespace and route.",
			Buckets:     []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
			ConstLabels: l,
		}, []string{"via"}),
	}
	deps.Register(m.backends, m.requests, m.bytes, m.duration)
	return m
}

func (m *hubMetrics) outcome(via, outcome string) {
	i, j := indexOf(vias[:], via), indexOf(outcomes[:], outcome)
	if i < 0 || j < 0 {
		m.requests.WithLabelValues(via, outcome).Inc()
		return
	}
	m.viaOutcome[i][j].get(func() prometheus.Counter { return m.requests.WithLabelValues(via, outcome) }).Inc()
}

// done records a relay's duration and bytes.
func (m *hubMetrics) done(via string, seconds float64, up, down int64) {
	if i := indexOf(vias[:], via); i >= 0 {
		m.viaTime[i].get(func() prometheus.Observer { return m.duration.WithLabelValues(via) }).Observe(seconds)
	} else {
		m.duration.WithLabelValues(via).Observe(seconds)
	}
	m.up.get(func() prometheus.Counter { return m.bytes.WithLabelValues("up") }).Add(float64(up))
	m.down.get(func() prometheus.Counter { return m.bytes.WithLabelValues("down") }).Add(float64(down))
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}
