package queue

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/store"
)

type metrics struct {
	appendedC  *prometheus.CounterVec
	trimmedC   *prometheus.CounterVec
	refusedC   *prometheus.CounterVec
	deliveredC *prometheus.CounterVec
	restoredC  *prometheus.CounterVec
	unsettledC *prometheus.CounterVec
	waitersG   *prometheus.GaugeVec
	wakeH      *prometheus.HistogramVec

	appended1 sync.Map // kind -> appendedC's child, looked up once
}

func newMetrics(reg prometheus.Registerer, c *Core, st store.Engine) *metrics {
	m := &metrics{
		appendedC: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_queue_appended_total",
			Help: "Messages appended to queues, by kind (t: tunnels, inbox).",
		}, []string{"kind"}),
		trimmedC: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_queue_trimmed_total",
			Help: "Messages removed from full queues to make room (backpressure off).",
		}, []string{"kind"}),
		refusedC: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_queue_refused_total",
			Help: "Appends refused because the queue was at its limit (backpressure).",
		}, []string{"kind"}),
		deliveredC: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_queue_delivered_total",
			Help: "Messages delivered to consumers: answered, and settled (removed, or pending until acknowledged).",
		}, []string{"kind"}),
		restoredC: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_queue_restored_total",
			Help: "Messages handed out whose answer failed (the consumer went away, an ack could not be stored), queued again in their places.",
		}, []string{"kind"}),
		unsettledC: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_queue_unsettled_total",
			Help: "Hand-outs whose settling failed (storage unavailable until the lease ran out): their messages are handed out again, so a delivered one may be delivered twice.",
		}, []string{"kind"}),
		waitersG: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_queue_waiters",
			Help: "Long-polls waiting for a message or a reply.",
		}, []string{"kind"}),
		wakeH: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "postern_queue_wake_seconds",
			Help:    "Time from a write waking a waiting long-poll (or its wake-up arriving from another node) to that long-poll holding the message or reply.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .002, .005, .01, .025, .1, 1},
		}, []string{"kind"}),
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.appendedC, m.trimmedC, m.refusedC, m.deliveredC, m.restoredC, m.unsettledC, m.waitersG, m.wakeH)
	if stats, ok := st.(store.Stats); ok {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "postern_queue_messages",
				Help: "Messages held in queues (pending plus unseen), all kinds.",
			}, func() float64 { return float64(stats.QueueStats().Messages) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "postern_queue_queues",
				Help: "Queues holding at least one message, all kinds.",
			}, func() float64 { return float64(stats.QueueStats().Queues) }),
		)
	}
	return m
}

func (m *metrics) appended(kind string, trimmed int) {
	c, ok := m.appended1.Load(kind)
	if !ok {
		c, _ = m.appended1.LoadOrStore(kind, m.appendedC.WithLabelValues(kind))
	}
	c.(prometheus.Counter).Inc()
	if trimmed > 0 {
		m.trimmedC.WithLabelValues(kind).Add(float64(trimmed))
	}
}

func (m *metrics) refused(kind string)      { m.refusedC.WithLabelValues(kind).Inc() }
func (m *metrics) settleFailed(kind string) { m.unsettledC.WithLabelValues(kind).Inc() }

func (m *metrics) settled(kind string, n int, delivered bool) {
	if delivered {
		m.deliveredC.WithLabelValues(kind).Add(float64(n))
	} else {
		m.restoredC.WithLabelValues(kind).Add(float64(n))
	}
}
func (m *metrics) waiting(kind string, d int) { m.waitersG.WithLabelValues(kind).Add(float64(d)) }
func (m *metrics) woken(kind string, d time.Duration) {
	m.wakeH.WithLabelValues(kind).Observe(d.Seconds())
}
