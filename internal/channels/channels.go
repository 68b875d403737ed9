package channels

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/store"
)

// Channels serves the channel routes.
type Channels struct {
	b       *broker.Broker
	opts    Options
	policy  *auth.Policy
	origins *originChecker
	h       http.Handler
	m       *metrics
	pool    *writerPool

	mu       sync.Mutex
	closing  bool
	sessions sync.WaitGroup // websocket sessions (hijacked: http.Server does not wait for them)

	websockets atomic.Int64
	streams    atomic.Int64
}

// New returns the channels front door on b, which it owns from then on
// (Shutdown shuts it down), its metrics on deps.Registry. Under
// deps.Policy subscribing needs read and publishing write on /c<channel
// path> (a token travels as a bearer header or, for browsers,
// ?access_token=).
func New(b *broker.Broker, opts Options, deps capability.Deps) (*Channels, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	c := &Channels{b: b, opts: opts, policy: deps.Policy, origins: newOriginChecker(opts.Origins), pool: newWriterPool(!opts.PlainWrites)}
	c.m = newMetrics(deps.Registry, c)
	c.h = httpapi.Handle(c.serve, writeError)
	return c, nil
}

// Mount adds the channel routes to the node's table under the prefix. At
// the root (Options.AtRoot: a dedicated channels host) channels are the
// table's fallback instead: every path nothing else takes is a channel,
// "/" included, and every other route keeps priority.
func (c *Channels) Mount(rt *httpapi.Routes) {
	if c.opts.AtRoot {
		rt.SetFallback(c)
		return
	}
	rt.Handle(c.opts.Prefix+"/", c)
}

// Prefix is the URL path prefix of channels: "" at the root.
func (c *Channels) Prefix() string { return c.opts.mount() }

func (c *Channels) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.h.ServeHTTP(w, r) }

// Shutdown ends every subscription (the broker's Shutdown: websockets
// close with 1001, event streams get "event: end"), then waits until
// every websocket session has ended, or ctx does: http.Server does not
// wait for them, hijacked. It is idempotent.
func (c *Channels) Shutdown(ctx context.Context) error {
	c.b.Shutdown(ctx)
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	done := make(chan struct{})
	go func() {
		c.sessions.Wait()
		c.pool.wait() // its last workers may still be on their way out
		c.pool.close()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats is what the status page shows about channels.
type Stats struct {
	broker.Stats
	Prefix     string `json:"prefix"`
	Websockets int64  `json:"websockets"`
	Streams    int64  `json:"event_streams"`
}

// Stats reports the front door's and the broker's figures.
func (c *Channels) Stats() Stats {
	p := c.opts.mount()
	return Stats{Stats: c.b.Stats(), Prefix: p, Websockets: c.websockets.Load(), Streams: c.streams.Load()}
}

// isUpgrade reports a websocket upgrade request: Connection names
// "upgrade" and Upgrade names "websocket", case-insensitively.
func isUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func wantsEventStream(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, t := range strings.Split(v, ",") {
			mt, _, _ := strings.Cut(t, ";")
			if strings.EqualFold(strings.TrimSpace(mt), "text/event-stream") {
				return true
			}
		}
	}
	return false
}

// serve answers in pinghub's order: its router first sent a path that is
// not canonical to the canonical one and refused methods it had no route
// for; its handlers then checked the path, and gorilla/websocket the
// handshake.
func (c *Channels) serve(w http.ResponseWriter, r *http.Request) error {
	if loc, ok := redirect(r, c.opts.mount()); ok {
		httpapi.SetRoute(w, "channels.redirect")
		w.Header().Set("Location", loc)
		w.WriteHeader(http.StatusMovedPermanently)
		return nil
	}
	if cors(w.Header(), r, c.origins) && r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		httpapi.SetRoute(w, "channels.preflight")
		return preflight(w, r)
	}
	upgrade := isUpgrade(r)
	if !upgrade && r.Method != http.MethodGet && r.Method != http.MethodPost {
		httpapi.SetRoute(w, "channels.bad_method")
		return errMethod
	}
	name, perr := channelPath(r.URL.Path, c.opts.mount())
	if perr != nil {
		httpapi.SetRoute(w, "channels.bad_path")
		return perr
	}
	switch {
	case upgrade:
		httpapi.SetRoute(w, "channels.websocket")
		if err := checkHandshake(r); err != nil {
			return err
		}
		if !c.origins.allow(r) {
			return errOrigin
		}
		if !validKey(r) {
			return errHandshake
		}
		if err := c.authorize(r, auth.Read, name); err != nil {
			return err
		}
		return c.serveWebsocket(w, r, name)
	case r.Method == http.MethodGet && wantsEventStream(r):
		httpapi.SetRoute(w, "channels.events")
		if !c.origins.allow(r) {
			return errOrigin
		}
		if err := c.authorize(r, auth.Read, name); err != nil {
			return err
		}
		return c.serveEvents(w, r, name)
	case r.Method == http.MethodGet:
		httpapi.SetRoute(w, "channels.page")
		return servePage(w, r, name)
	default: // POST: other methods were refused above
		httpapi.SetRoute(w, "channels.publish")
		if !c.origins.allow(r) {
			return errOrigin
		}
		if err := c.authorize(r, auth.Write, name); err != nil {
			return err
		}
		return c.publish(w, r, name)
	}
}

// cors lets a page on another origin read the answer (publish, event
// streams, and their errors) when the origin check allows that origin:
// "*" when no origins are configured (tokens travel in headers, never in
// cookies), else the origin itself. It reports whether it did. Websockets
// need no CORS: their origin check is the handshake's.
func cors(h http.Header, r *http.Request, oc *originChecker) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || !oc.allow(r) {
		return false
	}
	if len(oc.allowed) == 0 {
		h.Set("Access-Control-Allow-Origin", "*")
	} else {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
	}
	return true
}

// preflight answers a CORS preflight of an allowed origin. A plain OPTIONS
// keeps pinghub's 405.
func preflight(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", "GET, POST")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID")
	h.Set("Access-Control-Max-Age", "3600")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// authorize checks, when a token policy is configured, that r may take
// action on the channel: read to subscribe, write to publish.
func (c *Channels) authorize(r *http.Request, action auth.Action, name string) error {
	if c.mayTake(r, action, name) {
		return nil
	}
	verb := "publish to"
	if action == auth.Read {
		verb = "subscribe to"
	}
	return &httpapi.Error{Status: http.StatusForbidden, Message: "Error: forbidden.",
		Details: []string{auth.Denial(r, verb, quotePath(name), action, resource(name))}}
}

// mayTake reports whether r may take action on the channel.
func (c *Channels) mayTake(r *http.Request, action auth.Action, name string) bool {
	return !c.policy.Enabled() || c.policy.Allow(r, action, resource(name))
}

// resource is the channel's name in the token policy.
func resource(name string) string { return DefaultPrefix + name }

func quotePath(s string) string {
	if utf8.RuneCountInString(s) > 64 {
		s = string([]rune(s)[:64]) + "..."
	}
	return strconv.Quote(s)
}

// publish serves POST: the body is published as one text message.
func (c *Channels) publish(w http.ResponseWriter, r *http.Request, name string) error {
	// Read with a deadline: a body trickling in must not hold the
	// connection for ever.
	body, err := httpapi.ReadBody(w, r, c.opts.MaxPostBytes, c.opts.BodyReadTimeout, errPostTooBig)
	if err != nil {
		return err
	}
	if !utf8.Valid(body) {
		return errBodyUTF8
	}
	if len(body) > 0 {
		if _, err := c.b.Publish(r.Context(), name, broker.Message{Body: body}); err != nil {
			return publishError(err)
		}
		c.m.published.WithLabelValues("post").Inc()
	} else {
		c.m.empty.WithLabelValues("post").Inc()
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	_, err = w.Write([]byte("OK\n"))
	return err
}

// publishError maps broker errors to answers.
func publishError(err error) error {
	if errors.Is(err, broker.ErrShuttingDown) {
		return httpapi.ErrShuttingDown
	}
	return err
}

// parseSince reads the resume cursor of a subscription: ?since=, or for
// event streams also the Last-Event-ID header. since is nil when there is
// none; "now" asks for ids without a replay; "0" for the whole history.
func parseSince(r *http.Request, eventStream bool) (since *store.ID, asked bool, err error) {
	q := r.URL.Query()
	v, ok := q["since"]
	s := ""
	switch {
	case ok:
		s = v[0]
	case eventStream && r.Header.Get("Last-Event-ID") != "":
		s = r.Header.Get("Last-Event-ID")
	default:
		return nil, false, nil
	}
	switch s {
	case "now", "":
		return nil, true, nil
	case "0":
		return &store.ID{}, true, nil
	}
	id, perr := store.ParseID(s)
	if perr != nil {
		return nil, true, errSince
	}
	return &id, true, nil
}

func (c *Channels) acceptingSessions() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.sessions.Add(1)
	return true
}

type metrics struct {
	published *prometheus.CounterVec
	empty     *prometheus.CounterVec
	closed    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, c *Channels) *metrics {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_channels_published_total",
			Help: "Messages published on channels, by transport (post, websocket).",
		}, []string{"via"}),
		empty: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_channels_empty_total",
			Help: "Empty messages (not broadcast): keep-alive frames and empty POSTs.",
		}, []string{"via"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_channels_closed_total",
			Help: "Subscriber connections ended by the server, by reason.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.published, m.empty, m.closed,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "postern_channels_websockets",
				Help: "Open channel websockets.",
			}, func() float64 { return float64(c.websockets.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "postern_channels_event_streams",
				Help: "Open channel event streams (Server-Sent Events).",
			}, func() float64 { return float64(c.streams.Load()) }),
		)
	}
	return m
}
