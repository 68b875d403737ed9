package expose

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/capability"
)

// metrics are the capability's own measurements; the relay core counts
// the relayed requests themselves (postern_relay_requests_total with
// namespace="expose").
//
//	postern_expose_agents{transport}                     agents registered on this node (brickchain: client ids; native: connections)
//	postern_expose_registrations_total{transport,result} registration attempts by result
//	postern_expose_requests_total{transport,outcome}     user requests by the outcome expose decided
type metrics struct {
	agents        *prometheus.GaugeVec
	registrations *prometheus.CounterVec
	requests      *prometheus.CounterVec
}

// Transports, as the metrics name them.
const (
	transportBrickchain = "brickchain"
	transportNative     = "native"
	transportAny        = "any" // decided before the transport is known
)

func newMetrics(deps capability.Deps) *metrics {
	m := &metrics{
		agents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_expose_agents",
			Help: "Expose agents registered on this node, by transport (brickchain: client ids; native: agent connections).",
		}, []string{"transport"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_expose_registrations_total",
			Help: "Expose agent registration attempts, by transport and result.",
		}, []string{"transport", "result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_expose_requests_total",
			Help: "Expose user requests, by transport and the outcome expose decided (the relay core counts relayed ones too).",
		}, []string{"transport", "outcome"}),
	}
	for _, t := range []string{transportBrickchain, transportNative} {
		m.agents.WithLabelValues(t)
	}
	deps.Register(m.agents, m.registrations, m.requests)
	return m
}

func (m *metrics) request(transport, outcome string) {
	m.requests.WithLabelValues(transport, outcome).Inc()
}

func (m *metrics) registration(transport, result string) {
	m.registrations.WithLabelValues(transport, result).Inc()
}

// of returns the counters of one transport (brickchain.Counters).
func (m *metrics) of(transport string) transportCounters {
	return transportCounters{m, transport}
}

// transportCounters are the metrics of one transport.
type transportCounters struct {
	m         *metrics
	transport string
}

func (c transportCounters) Registration(result string) { c.m.registration(c.transport, result) }
func (c transportCounters) Request(outcome string)     { c.m.request(c.transport, outcome) }
func (c transportCounters) Agents(delta int) {
	c.m.agents.WithLabelValues(c.transport).Add(float64(delta))
}
