package inbox

import "github.com/prometheus/client_golang/prometheus"

// metrics are the inbox's own counters. The queue core counts appends and
// deliveries of kind "inbox" on top of these.
type metrics struct {
	sent       prometheus.Counter
	duplicates prometheus.Counter
	received   *prometheus.CounterVec
	acks       prometheus.Counter
	acksDrop   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_inbox_sent_total",
			Help: "Message copies stored, one per destination.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_inbox_duplicates_total",
			Help: "Message copies and acks not stored anew because their idempotency key matched (replaced while unread, or suppressed after it was read).",
		}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_inbox_received_total",
			Help: "Entries delivered by receive and exchange (the answer written), by type (msg, ack).",
		}, []string{"type"}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_inbox_acks_total",
			Help: "Acks stored for their origin when a message that expected one was received.",
		}),
		acksDrop: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_inbox_acks_dropped_total",
			Help: "Acks not stored because their origin's inbox was full.",
		}),
	}
	m.received.WithLabelValues("msg")
	m.received.WithLabelValues("ack")
	if reg != nil {
		reg.MustRegister(m.sent, m.duplicates, m.received, m.acks, m.acksDrop)
	}
	return m
}
