package broker

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type metrics struct {
	published   prometheus.Counter
	delivered   prometheus.Counter
	unheard     prometheus.Counter
	slow        prometheus.Counter
	malformed   prometheus.Counter
	subscribed  prometheus.Counter
	channels    prometheus.Gauge
	subscribers prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, b *Broker) *metrics {
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_broker_published_total",
			Help: "Messages published on channels (on this node).",
		}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_broker_delivered_total",
			Help: "Messages queued for local subscribers (one per subscriber).",
		}),
		unheard: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_broker_unheard_total",
			Help: "Messages that reached no local subscriber (dropped).",
		}),
		slow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_broker_slow_dropped_total",
			Help: "Subscribers dropped because their send queue was full.",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_broker_malformed_payloads_total",
			Help: "Fan-out payloads that could not be decoded (dropped).",
		}),
		subscribed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_broker_subscriptions_total",
			Help: "Subscriptions started.",
		}),
		channels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postern_broker_channels",
			Help: "Channels with at least one local subscriber.",
		}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postern_broker_subscribers",
			Help: "Local subscribers over all channels.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.published, m.delivered, m.unheard, m.slow, m.malformed, m.subscribed, m.channels, m.subscribers)
	}
	return m
}

// count reads a counter's value.
func (m *metrics) count(c prometheus.Counter) uint64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil || d.Counter == nil {
		return 0
	}
	return uint64(d.Counter.GetValue())
}
