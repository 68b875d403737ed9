// Package web owns postern's own web page: live status of the node and a
// panel to publish to and watch a channel, served at / (at /_postern/ when
// channels take the root), and the small JSON status endpoint it polls,
// /_postern/status. The server assembles the status from the cores by
// registering sections; a capability adds its figures with one Section
// call and the page shows them without changes.
package web

import (
	"context"
	_ "embed"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/postern/postern/internal/httpapi"
)

// Paths of the page and the status endpoint.
const (
	PagePath   = "/_postern/"
	StatusPath = "/_postern/status"
)

// DefaultRateWindow is the shortest interval rates are computed over.
const DefaultRateWindow = time.Second

// Defaults of the rate history the page's charts draw.
const (
	DefaultHistoryInterval = 5 * time.Second
	DefaultHistoryPoints   = 120 // ten minutes
)

//go:embed page.html
var pageHTML []byte

// Rate is a per-second rate shown in the status: the sum of the series of
// a Prometheus counter, all of them or those whose Label is Value.
type Rate struct {
	Name   string // key in the status ("http_requests")
	Metric string // counter family ("postern_http_requests_total")
	Label  string // optional: count only series with this label...
	Value  string // ...set to this value
}

// Options configures the page.
type Options struct {
	// AtRoot leaves / to others (channels at the root); the page is then
	// only at PagePath.
	AtRoot bool
	// Gatherer is where rates are read from.
	Gatherer prometheus.Gatherer
	// Rates are the rates the status shows.
	Rates []Rate
	// Version is reported in the node section.
	Version string
	// Private reports whether a request may see names (of relay backends,
	// exposed services): sections ask with IsPrivate. Nil: never.
	Private func(r *http.Request) bool
	// HistoryInterval and HistoryPoints shape the history of rates kept
	// for the charts (Start samples it); 0 means the defaults.
	HistoryInterval time.Duration
	HistoryPoints   int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Web serves the page and the status.
type Web struct {
	opts    Options
	started time.Time

	mu       sync.Mutex
	sections map[string]func(context.Context) any

	rateMu sync.Mutex
	lastAt time.Time
	last   map[string]float64
	rates  map[string]float64

	// The history: one point per HistoryInterval, oldest first.
	histMu   sync.Mutex
	histAt   time.Time
	histLast map[string]float64
	history  map[string][]float64
	stop     chan struct{}
	stopped  chan struct{}
	stopOnce sync.Once
	running  atomic.Bool
}

// New returns the page.
func New(opts Options) *Web {
	opts.Validate()
	return &Web{opts: opts, started: opts.Now(), sections: make(map[string]func(context.Context) any),
		history: make(map[string][]float64), stop: make(chan struct{}), stopped: make(chan struct{})}
}

// Validate fills the settings left zero (or negative) with their
// defaults; it refuses none.
func (o *Options) Validate() error {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.HistoryInterval <= 0 {
		o.HistoryInterval = DefaultHistoryInterval
	}
	if o.HistoryPoints <= 0 {
		o.HistoryPoints = DefaultHistoryPoints
	}
	return nil
}

// Start samples the rates every HistoryInterval for the charts, until
// Close.
func (w *Web) Start() {
	w.running.Store(true)
	w.Tick()
	go func() {
		defer close(w.stopped)
		t := time.NewTicker(w.opts.HistoryInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				w.Tick()
			case <-w.stop:
				return
			}
		}
	}()
}

// Close stops the sampling Start began; it is idempotent.
func (w *Web) Close() {
	w.stopOnce.Do(func() {
		close(w.stop)
		if w.running.Load() {
			<-w.stopped
		}
	})
}

// Tick adds one point to the history: each rate over the time since the
// last point (the first point only sets the start).
func (w *Web) Tick() {
	now := w.opts.Now()
	cur := w.sample()
	w.histMu.Lock()
	defer w.histMu.Unlock()
	if w.histLast != nil {
		d := now.Sub(w.histAt).Seconds()
		for _, rt := range w.opts.Rates {
			v := 0.0
			if d > 0 {
				v = max(cur[rt.Name]-w.histLast[rt.Name], 0) / d
			}
			h := append(w.history[rt.Name], v)
			if len(h) > w.opts.HistoryPoints {
				h = append(h[:0:0], h[len(h)-w.opts.HistoryPoints:]...)
			}
			w.history[rt.Name] = h
		}
	}
	w.histLast, w.histAt = cur, now
}

// History is the "history" part of the status: per-second rates, one point
// per interval, oldest first.
type History struct {
	IntervalSeconds float64              `json:"interval_seconds"`
	Rates           map[string][]float64 `json:"rates"`
}

func (w *Web) historyCopy() History {
	w.histMu.Lock()
	defer w.histMu.Unlock()
	h := History{IntervalSeconds: w.opts.HistoryInterval.Seconds(), Rates: make(map[string][]float64, len(w.opts.Rates))}
	for _, rt := range w.opts.Rates {
		h.Rates[rt.Name] = append([]float64{}, w.history[rt.Name]...)
	}
	return h
}

type privateKey struct{}

// IsPrivate reports whether the status being assembled is for a request
// that may see names (Options.Private said so).
func IsPrivate(ctx context.Context) bool {
	p, _ := ctx.Value(privateKey{}).(bool)
	return p
}

// Section adds (or replaces) a named part of the status: f returns a
// value that encodes to a JSON object, such as a struct of counts. Names
// are the status's top-level keys; "node" and "rates" are taken.
func (w *Web) Section(name string, f func(ctx context.Context) any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sections[name] = f
}

// Mount adds the page at PagePath and the status endpoint to rt. The page
// at "/" itself is the node's to place (see Page).
func (w *Web) Mount(rt *httpapi.Routes) {
	rt.Handle(PagePath, w.Page())
	rt.Handle(StatusPath, httpapi.Handle(w.serveStatus, nil))
}

// Page is the page's handler; it answers 404 for paths other than "/"
// (unless AtRoot) and PagePath.
func (w *Web) Page() http.Handler { return httpapi.Handle(w.servePage, nil) }

func (w *Web) servePage(rw http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(rw, "web.page")
	if r.URL.Path != PagePath && (r.URL.Path != "/" || w.opts.AtRoot) {
		return httpapi.ErrNotFound
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return httpapi.MethodNotAllowed(http.MethodGet, http.MethodHead)
	}
	h := rw.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; connect-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Frame-Options", "DENY")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := rw.Write(pageHTML)
	return err
}

// Status is the status document: "node", "rates", "history" and one key
// per section.
type Status map[string]any

// Node is the "node" part of the status.
type Node struct {
	Version       string  `json:"version"`
	StartedAt     string  `json:"started_at"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Private says whether names are shown to this reader.
	Private bool `json:"private"`
}

// Status assembles the status document.
func (w *Web) Status(ctx context.Context) Status {
	now := w.opts.Now()
	st := Status{
		"node": Node{Version: w.opts.Version, StartedAt: w.started.UTC().Format(time.RFC3339), UptimeSeconds: now.Sub(w.started).Seconds(),
			Private: IsPrivate(ctx)},
		"rates":   w.currentRates(now),
		"history": w.historyCopy(),
	}
	w.mu.Lock()
	names := make([]string, 0, len(w.sections))
	for n := range w.sections {
		names = append(names, n)
	}
	fns := make([]func(context.Context) any, len(names))
	sort.Strings(names)
	for i, n := range names {
		fns[i] = w.sections[n]
	}
	w.mu.Unlock()
	for i, n := range names {
		st[n] = fns[i](ctx)
	}
	return st
}

func (w *Web) serveStatus(rw http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(rw, "web.status")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return httpapi.MethodNotAllowed(http.MethodGet, http.MethodHead)
	}
	ctx := r.Context()
	if w.opts.Private != nil && w.opts.Private(r) {
		ctx = context.WithValue(ctx, privateKey{}, true)
	}
	b, err := json.Marshal(w.Status(ctx))
	if err != nil {
		return err
	}
	h := rw.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = rw.Write(append(b, '\n'))
	return err
}

// currentRates returns per-second rates over the interval since the last
// sample at least DefaultRateWindow old: the first call reports zeros.
func (w *Web) currentRates(now time.Time) map[string]float64 {
	w.rateMu.Lock()
	defer w.rateMu.Unlock()
	if w.rates != nil && now.Sub(w.lastAt) < DefaultRateWindow {
		return w.rates
	}
	cur := w.sample()
	rates := make(map[string]float64, len(w.opts.Rates))
	for _, rt := range w.opts.Rates {
		rates[rt.Name] = 0
		if w.last != nil {
			if d := now.Sub(w.lastAt).Seconds(); d > 0 {
				rates[rt.Name] = max(cur[rt.Name]-w.last[rt.Name], 0) / d
			}
		}
	}
	w.last, w.lastAt, w.rates = cur, now, rates
	return rates
}

func (w *Web) sample() map[string]float64 {
	out := make(map[string]float64, len(w.opts.Rates))
	if w.opts.Gatherer == nil {
		return out
	}
	mfs, err := w.opts.Gatherer.Gather()
	if err != nil {
		return out
	}
	for _, rt := range w.opts.Rates {
		out[rt.Name] = CounterSum(mfs, rt.Metric, rt.Label, rt.Value)
	}
	return out
}

// CounterSum is the sum of the series of counter metric in mfs, of those
// whose label is value when label is set.
func CounterSum(mfs []*dto.MetricFamily, metric, label, value string) float64 {
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if label != "" {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == label && lp.GetValue() != value {
						continue series
					}
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
