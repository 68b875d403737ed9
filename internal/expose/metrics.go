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
//	postern_expose_connections_total{transport,outcome}  raw user connections (tcp: public ports; tls: passthrough by SNI): ok, no_agent, over_cap
//	postern_expose_connections{transport}                raw user connections open
//	postern_expose_bytes_total{transport,direction}      raw bytes carried: in (user to agent), out (agent to user)
//	postern_expose_tcp_ports                             public TCP ports open
type metrics struct {
	agents        *prometheus.GaugeVec
	registrations *prometheus.CounterVec
	requests      *prometheus.CounterVec
	conns         *prometheus.CounterVec
	open          *prometheus.GaugeVec
	bytes         *prometheus.CounterVec
	ports         prometheus.Gauge
}

// Transports, as the metrics name them.
const (
	transportBrickchain = "brickchain"
	transportNative     = "native"
	transportAny        = "any" // decided before the transport is known
	transportTCP        = "tcp" // raw connections on public TCP ports
	transportTLS        = "tls" // raw connections passed through by SNI
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
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_expose_connections_total",
			Help: "Raw user connections to expose agents (tcp: public TCP ports; tls: TLS passed through by SNI), by outcome.",
		}, []string{"transport", "outcome"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_expose_connections",
			Help: "Raw user connections to expose agents open on this node, by transport.",
		}, []string{"transport"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_expose_bytes_total",
			Help: "Bytes carried on raw user connections to expose agents, by transport and direction (in: user to agent).",
		}, []string{"transport", "direction"}),
		ports: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postern_expose_tcp_ports",
			Help: "Public TCP ports open for expose agents on this node.",
		}),
	}
	for _, t := range []string{transportBrickchain, transportNative} {
		m.agents.WithLabelValues(t)
	}
	for _, t := range []string{transportTCP, transportTLS} {
		m.open.WithLabelValues(t)
	}
	deps.Register(m.agents, m.registrations, m.requests, m.conns, m.open, m.bytes, m.ports)
	return m
}

// raw returns the counters of one raw transport (tcp or tls).
func (m *metrics) raw(transport string) rawCounters {
	return rawCounters{
		conns: m.conns.MustCurryWith(prometheus.Labels{"transport": transport}),
		open:  m.open.WithLabelValues(transport),
		in:    m.bytes.WithLabelValues(transport, "in"),
		out:   m.bytes.WithLabelValues(transport, "out"),
	}
}

// rawCounters are the metrics of one raw transport.
type rawCounters struct {
	conns   *prometheus.CounterVec // by outcome
	open    prometheus.Gauge
	in, out prometheus.Counter
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

func (c rawCounters) addIn(n int)  { c.in.Add(float64(n)) }
func (c rawCounters) addOut(n int) { c.out.Add(float64(n)) }
