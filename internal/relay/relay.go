// Package relay is the core that the relay and expose capabilities share: a
// hub of named backends, and the one place where a user's HTTP request is
// relayed to a backend and the backend's response streams back.
//
// The design follows Tailscale's derp: one core fed by thin transports. A
// backend is anything that satisfies http.RoundTripper; the user side is a
// single httputil.ReverseProxy whose Transport picks the backend by name, so
// streaming in both directions, trailers, 101 upgrades and cancellation are
// handled once, here, for every transport. Plain requests (no upgrade, no
// Expect, no request trailers) take a fast path with the proxy's semantics
// and a third of its allocations (fast.go); tests hold the two to the same
// answers.
//
// # Plugging in a transport
//
// A transport (the Cloud Robotics long-poll protocol, brickchain JSON frames
// over a websocket, the native yamux agent) does two things:
//
//  1. When a backend connects, it calls Hub.Register(name, rt) with an
//     http.RoundTripper that carries a request to that backend, and closes
//     the returned Registration when the backend goes away. Several
//     backends may register under one name; requests go to the one with the
//     fewest requests in flight. The RoundTripper must honour the request's
//     context (the user went away, or the hub is shutting down), stream the
//     request body rather than buffer it where its wire format allows, and
//     return a Response whose Body streams. For a 101 Switching Protocols
//     answer the Body must be an io.ReadWriteCloser (as http.Transport
//     returns): the user's bytes are written to it and its bytes go to the
//     user. An error that should reach the user as a particular status is
//     returned as an *httpapi.Error; an error from the Body's Read in the
//     middle of a response aborts the user's connection (or resets the
//     HTTP/2 stream), so a cut response never looks complete. A Body that
//     also implements io.WriterTo is written to the user by its WriteTo,
//     straight from its own buffers (the proxy writes the headers and
//     copies nothing); the writer it gets has Flush() error, which it
//     calls when it has nothing more to write at once, and ReadFrom,
//     which hands a source to the user's response (net/http splices a
//     TCP connection into a plain TCP answer of known length).
//  2. When a user request arrives at its front door, it checks the user's
//     rights and calls Hub.Serve(w, r, Target{Name: ..., Path: ...}).
//
// For the native agent the RoundTripper is simply an http.Transport whose
// DialContext opens a stream on the agent's multiplexed connection.
//
// # Several nodes
//
// When the hub has a store.Directory (capability.Deps.Directory: engines
// shared by several nodes), it
// lists every name with a local backend under its namespace and this node's
// advertised internal URL, renewing the entries while the backends live.
// A request for a name with no local backend is forwarded, as plain HTTP
// with its original path, query and Host, to a node that holds the name;
// ForwardedHeader marks it so that the receiving node serves it locally or
// answers "no backend", and never forwards it again. The mark is signed
// with the secret the nodes share (capability.Deps.Cluster,
// internal/cluster); the receiving node drops a mark that does not verify,
// so a user cannot claim to be a node. The receiving node's front door still parses
// and authorizes the forwarded request exactly as it would a direct one
// (the user's token travels with it, and is removed only when the request
// reaches its backend), so a node grants nothing on another's word. A local backend
// that implements Readier and says it is not ready (a long-poll transport
// with no poll parked) yields to another node that lists the name.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/cluster"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/store"
)

// ForwardedHeader marks a request that one node forwarded to another. Its
// value is the namespace of the hub that forwarded it, signed when the
// node has cluster keys (see internal/cluster).
const ForwardedHeader = cluster.Header

// Defaults of the hub's options.
const (
	// DefaultRegisterTTL is how long a directory entry lives unless
	// renewed; entries are renewed every third of it.
	DefaultRegisterTTL = 30 * time.Second
	// DefaultForwardDialTimeout bounds connecting to another node.
	DefaultForwardDialTimeout = 5 * time.Second
	// DefaultForwardHeaderTimeout bounds how long another node may take to
	// start its answer to a forwarded request. It is generous because the
	// other node applies its transport's own timeouts and answers with them.
	DefaultForwardHeaderTimeout = 5 * time.Minute
	// DefaultDirectoryTimeout bounds one directory call.
	DefaultDirectoryTimeout = 5 * time.Second
	// DefaultFlushInterval bounds how long a response of known length may
	// sit in buffers before it is flushed to the user. Responses of
	// unknown length (streams: a relayed response that comes in chunks,
	// a chunked answer) and event streams are flushed at every write
	// whatever the interval, so streams are never held back; a response of
	// known length that arrives slowly is at most this late, and one that
	// is there at once leaves in one write instead of a flush per write
	// (and without the proxy's header-flush timer, which it starts for
	// every response when the interval is negative).
	DefaultFlushInterval = 10 * time.Millisecond
)

// Options configures a Hub. A zero duration takes its Default*.
type Options struct {
	// Namespace names the hub's names in the directory and the metrics
	// ("relay", "expose").
	Namespace string
	// AdvertiseURL is this node's internal base URL ("http://10.0.0.5:8080")
	// that other nodes forward to. It may also be set later with
	// SetAdvertiseURL; until it is, nothing is announced.
	AdvertiseURL string
	// RegisterTTL is the lifetime of a directory entry.
	RegisterTTL time.Duration
	// DirectoryTimeout bounds each directory call.
	DirectoryTimeout time.Duration
	// ForwardDialTimeout bounds connecting to another node.
	ForwardDialTimeout time.Duration
	// ForwardHeaderTimeout bounds how long another node may take to start
	// answering a forwarded request.
	ForwardHeaderTimeout time.Duration
	// FlushInterval is httputil.ReverseProxy's, for responses of known
	// length: negative flushes every write at once, positive flushes at
	// most this late, 0 leaves it to the buffers. Responses of unknown
	// length and event streams are flushed at every write in any case.
	FlushInterval time.Duration

	// proxyOnly relays every request through the reverse proxy, none on
	// the fast path (tests compare the two).
	proxyOnly bool
}

// DefaultOptions returns the defaults for namespace ns.
func DefaultOptions(ns string) Options {
	return Options{
		Namespace:            ns,
		RegisterTTL:          DefaultRegisterTTL,
		DirectoryTimeout:     DefaultDirectoryTimeout,
		ForwardDialTimeout:   DefaultForwardDialTimeout,
		ForwardHeaderTimeout: DefaultForwardHeaderTimeout,
		FlushInterval:        DefaultFlushInterval,
	}
}

// Validate fills the durations left zero with their defaults and reports
// the first setting that makes no sense.
func (o *Options) Validate() error {
	d := DefaultOptions(o.Namespace)
	if o.Namespace == "" {
		return errors.New("relay: namespace is missing")
	}
	capability.Default(&o.RegisterTTL, d.RegisterTTL)
	capability.Default(&o.DirectoryTimeout, d.DirectoryTimeout)
	capability.Default(&o.ForwardDialTimeout, d.ForwardDialTimeout)
	capability.Default(&o.ForwardHeaderTimeout, d.ForwardHeaderTimeout)
	if o.RegisterTTL < 0 || o.DirectoryTimeout < 0 || o.ForwardDialTimeout < 0 || o.ForwardHeaderTimeout < 0 {
		return errors.New("relay: timeouts must not be negative")
	}
	return nil
}

// Errors of the hub. Front doors turn them into their own wire answers with
// Target.NoBackend and Target.ErrorWriter.
var (
	// ErrNoBackend: no backend has the name, on this node or any other.
	ErrNoBackend = errors.New("no backend with that name")
	// ErrShuttingDown: the hub no longer takes requests.
	ErrShuttingDown = errors.New("relay is shutting down")
	// ErrBackendGone is what a backend's RoundTripper returns (wrapped or
	// not) when it could not even start the request because its backend's
	// connection has ended, before the transport noticed and closed the
	// registration. Nothing of the request was sent, so the hub closes
	// that registration and tries another backend of the name.
	ErrBackendGone = errors.New("the backend's connection has ended")
)

// Target says where Serve sends a request and how it answers failures.
type Target struct {
	// Name is the backend's name.
	Name string
	// Path and RawQuery are the request's path and raw query as the
	// backend sees them (a front door strips its own prefix). RawPath, when
	// set, is Path's encoded form, as in url.URL (it keeps "%2F").
	Path     string
	RawPath  string
	RawQuery string
	// MaxRequestBodyBytes > 0 limits the request body; a larger one is
	// answered 413.
	MaxRequestBodyBytes int64
	// NoBackend is the answer when no backend has the name; nil: 502
	// "no backend named ...".
	NoBackend func(name string) *httpapi.Error
	// ErrorWriter writes error answers; nil: httpapi.WritePlain.
	ErrorWriter httpapi.ErrorWriter
	// NoXForwarded leaves the proxy headers to the user: the backend gets
	// the Forwarded and X-Forwarded-* headers the user sent, as they came,
	// and none of the hub's own (the Cloud Robotics relay added none).
	// False: X-Forwarded-For, -Host and -Proto are set as a proxy sets them.
	NoXForwarded bool
	// Local, when set, is called on the outbound request just before it
	// goes to a backend on this node (not when it is forwarded to another
	// node, which needs the request as the user sent it): a front door
	// removes there what only postern should see, such as its own token.
	Local func(out *http.Request)
}

// Hub is a registry of named backends and the user side of every relay.
type Hub struct {
	opts    Options
	dir     store.Directory // nil: this node alone
	keys    *cluster.Keys   // nil: forwarding marks are not signed
	log     *slog.Logger
	m       *hubMetrics
	proxy   *httputil.ReverseProxy
	forward *http.Transport

	mu       sync.Mutex
	backends map[string][]*Registration
	closing  bool
	calls    map[*call]struct{}
	active   int           // calls in progress that are not upgraded
	drained  chan struct{} // closed once closing and active == 0
	advert   string

	wg       sync.WaitGroup // Serve calls in progress
	announce *announcer     // nil without a directory

	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error
}

// New returns a hub. With deps.Directory it announces its backends to the
// other nodes and forwards requests for names it does not hold, marked
// with deps.Cluster's signature. The hub takes any request carrying
// ForwardedHeader as forwarded by a node, so whoever serves the hub
// removes the header from requests whose mark does not verify (the node
// does, with the cluster secret). Its metrics carry the namespace label,
// so several hubs share one registry.
func New(opts Options, deps capability.Deps) (*Hub, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	h := &Hub{
		opts:         opts,
		dir:          deps.Directory,
		keys:         deps.Cluster,
		log:          deps.Log(),
		m:            newMetrics(deps, opts.Namespace),
		backends:     make(map[string][]*Registration),
		calls:        make(map[*call]struct{}),
		drained:      make(chan struct{}),
		advert:       opts.AdvertiseURL,
		shutdownDone: make(chan struct{}),
	}
	h.proxy = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      roundTripFunc(h.roundTrip),
		FlushInterval:  opts.FlushInterval,
		BufferPool:     bufferPool{},
		ErrorHandler:   h.proxyError,
		ModifyResponse: h.modifyResponse,
		ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	if h.dir != nil {
		h.forward = newForwardTransport(opts)
		h.announce = newAnnouncer(h)
	}
	return h, nil
}

// Shared reports whether the hub shares its names with other nodes (it
// has a directory): a request may then reach a node that does not hold
// its backend, and be forwarded.
func (h *Hub) Shared() bool { return h.dir != nil }

// Namespace returns the hub's namespace.
func (h *Hub) Namespace() string { return h.opts.Namespace }

// SetAdvertiseURL sets this node's internal base URL, if the options did not
// (a node learns its port only once it listens). Later calls are ignored.
func (h *Hub) SetAdvertiseURL(u string) {
	h.mu.Lock()
	set := h.advert == "" && u != ""
	if set {
		h.advert = u
	}
	h.mu.Unlock()
	if set && h.announce != nil {
		h.announce.kick()
	}
}

func (h *Hub) advertiseURL() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.advert
}

// Registration is one backend registered under a name.
type Registration struct {
	hub      *Hub
	name     string
	rt       http.RoundTripper
	inflight atomic.Int64
	once     sync.Once
}

// Readier is implemented by backends that can say whether they would take
// a request at once. When a local backend is not ready and other nodes
// list the name, the hub forwards the request there instead; when none
// does, the local backend gets it anyway.
type Readier interface {
	Ready() bool
}

func (r *Registration) ready() bool {
	rd, ok := r.rt.(Readier)
	return !ok || rd.Ready()
}

// Name returns the name the backend registered under.
func (r *Registration) Name() string { return r.name }

// Close removes the backend from the hub. Requests already handed to it go
// on; it gets no new ones. Close is idempotent.
func (r *Registration) Close() {
	r.once.Do(func() {
		h := r.hub
		h.mu.Lock()
		list := h.backends[r.name]
		for i, x := range list {
			if x == r {
				list = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(h.backends, r.name)
		} else {
			h.backends[r.name] = list
		}
		last := len(list) == 0
		h.mu.Unlock()
		h.m.backends.Dec()
		if last && h.announce != nil {
			h.announce.kick()
		}
	})
}

// Register adds rt as a backend for name and returns its registration; the
// transport closes it when the backend goes away. With a directory, the
// name is announced to the other nodes in the background (see Announced).
func (h *Hub) Register(name string, rt http.RoundTripper) *Registration {
	r := &Registration{hub: h, name: name, rt: rt}
	h.mu.Lock()
	first := len(h.backends[name]) == 0
	h.backends[name] = append(h.backends[name], r)
	h.mu.Unlock()
	h.m.backends.Inc()
	if first && h.announce != nil {
		h.announce.kick()
	}
	return r
}

// Has reports whether a backend for name is registered on this node.
func (h *Hub) Has(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.backends[name]) > 0
}

// Connected reports whether a backend for name is registered on this
// node or, with a node directory, on another.
func (h *Hub) Connected(ctx context.Context, name string) (bool, error) {
	if h.Has(name) || h.dir == nil {
		return h.Has(name), nil
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.DirectoryTimeout)
	defer cancel()
	addrs, err := h.dir.Lookup(ctx, h.opts.Namespace, name)
	return len(addrs) > 0, err
}

// Names lists the names with a backend on this node.
func (h *Hub) Names() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.backends))
	for n := range h.backends {
		out = append(out, n)
	}
	return out
}

// Backends reports, per name with a backend on this node, how many
// backends (agents, relay clients) are registered under it.
func (h *Hub) Backends() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.backends))
	for n, list := range h.backends {
		out[n] = len(list)
	}
	return out
}

// Local returns the RoundTripper of a backend registered for name on this
// node (the one with the fewest requests in flight), or nil: for a front
// door whose backends serve some requests in their own way (a Brickchain
// agent's websockets).
func (h *Hub) Local(name string) http.RoundTripper {
	if r := h.pick(name); r != nil {
		return r.rt
	}
	return nil
}

// pick returns the local backend for name with the fewest requests in
// flight, ties broken at random, or nil.
func (h *Hub) pick(name string) *Registration {
	h.mu.Lock()
	defer h.mu.Unlock()
	list := h.backends[name]
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	start := rand.IntN(len(list))
	best := list[start]
	for i := 1; i < len(list); i++ {
		r := list[(start+i)%len(list)]
		if r.inflight.Load() < best.inflight.Load() {
			best = r
		}
	}
	return best
}

// call is one Serve in progress.
type call struct {
	t         Target
	in        *http.Request // the user's request as it arrived
	cancel    context.CancelFunc
	forwarded bool   // the request came from another node
	localOnly bool   // never forwarded (see WithLocalOnly)
	via       string // "local" or "forwarded" once a route is chosen
	upgraded  atomic.Bool
	counted   bool         // in Hub.active; guarded by Hub.mu
	outcome   atomic.Value // string, set once the relay's fate is known
	up, down  atomic.Int64 // bytes to the backend, bytes to the user
	// direct is a response whose body the hub writes to the user itself
	// (see writeDirect); announced lists its trailers announced with the
	// headers.
	direct    *http.Response
	directRB  *respBody
	announced []string

	// What the fast path (fast.go) would otherwise allocate per request.
	url     url.URL
	reqBody countingReader
	rb      respBody
	lw      latencyWriter
	w       http.ResponseWriter // the user's, for informational answers
	trace   httptrace.ClientTrace
	rtMu    sync.Mutex // rtDone, and w while the round trip lasts
	rtDone  bool
}

func (c *call) setOutcome(o string) { c.outcome.CompareAndSwap(nil, o) }

type callKey struct{}

type localOnlyKey struct{}

// WithLocalOnly marks a request context so that the hub serves the
// request from a local backend only and never forwards it: the server
// marks requests whose forwarding mark it dropped, so that two nodes
// that do not trust each other's marks never send a request back and
// forth.
func WithLocalOnly(ctx context.Context) context.Context {
	return context.WithValue(ctx, localOnlyKey{}, true)
}

// LocalOnly reports whether ctx was marked by WithLocalOnly.
func LocalOnly(ctx context.Context) bool {
	v, _ := ctx.Value(localOnlyKey{}).(bool)
	return v
}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// Serve relays r to the backend t names and writes the backend's answer to
// w. It returns when the exchange is over: the response was relayed, the
// user or the backend went away, or the hub shut down.
func (h *Hub) Serve(w http.ResponseWriter, r *http.Request, t Target) {
	c := &call{t: t, in: r, forwarded: r.Header.Get(ForwardedHeader) != "", localOnly: LocalOnly(r.Context()), via: "local"}
	ew := t.ErrorWriter
	if ew == nil {
		ew = httpapi.WritePlain
	}
	fast := !h.opts.proxyOnly && fastOK(r)
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		h.m.outcome("local", "refused")
		ew(w, r, httpapi.ErrShuttingDown)
		return
	}
	var ctx context.Context
	var cancel context.CancelFunc
	if fast {
		ctx, cancel = context.WithCancel(r.Context())
	} else {
		ctx, cancel = context.WithCancel(context.WithValue(r.Context(), callKey{}, c))
	}
	c.cancel = cancel
	h.calls[c] = struct{}{}
	c.counted = true
	h.active++
	h.wg.Add(1)
	h.mu.Unlock()

	start := time.Now()
	inBody := r.Body
	defer func() {
		// Runs also when the proxy aborts the connection with
		// http.ErrAbortHandler, which the HTTP server recovers.
		cancel()
		if inBody != nil && !c.upgraded.Load() {
			// In full-duplex mode a body left unread when the handler
			// returns races the server's next read (a panic in net/http
			// that resets the connection); closing it here discards the
			// rest the usual way.
			inBody.Close()
		}
		h.mu.Lock()
		delete(h.calls, c)
		h.uncountLocked(c)
		h.mu.Unlock()
		h.wg.Done()
		outcome, _ := c.outcome.Load().(string)
		switch {
		case outcome != "":
		case c.upgraded.Load():
			outcome = "upgraded" // however it ended
		case r.Context().Err() != nil:
			outcome = "canceled"
		default:
			outcome = "aborted"
		}
		h.m.outcome(c.via, outcome)
		h.m.done(c.via, time.Since(start).Seconds(), c.up.Load(), c.down.Load())
	}()

	defer func() {
		if c.directRB != nil {
			// The proxy failed after taking the response (it did not, so
			// far as net/http goes): the backend's slot is still freed.
			c.directRB.Close()
		}
	}()
	in := r
	if fast {
		ctx = c.fastContext(ctx, w)
	}
	r = r.WithContext(ctx)
	// The backend may answer while the user is still sending (streams,
	// websockets over HTTP/1.1 bodies): without this the HTTP/1 server
	// would swallow the rest of the request body before the first write.
	// HTTP/2 is always full duplex and says it is not supported.
	_ = enableFullDuplex(w)
	if t.MaxRequestBodyBytes > 0 && r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength > t.MaxRequestBodyBytes {
			c.setOutcome("error")
			ew(w, r, httpapi.ErrRequestTooLarge)
			return
		}
		// Not http.MaxBytesReader: that closes the connection, and a user
		// still sending then sees a reset instead of the 413.
		r.Body = &limitedBody{rc: r.Body, left: t.MaxRequestBodyBytes, limit: t.MaxRequestBodyBytes}
	}
	if fast {
		h.serveFast(w, in, r, c)
		return
	}
	h.proxy.ServeHTTP(w, r)
	if c.direct != nil {
		h.writeDirect(w, c)
	}
}

// rewrite shapes the outbound request: the target's path and query, the
// user's Host, and X-Forwarded-* as a proxy sets them (on a forwarded
// request the hops and scheme it lists are kept, and the address this node
// saw is appended), or as the user sent them with Target.NoXForwarded.
func (h *Hub) rewrite(pr *httputil.ProxyRequest) {
	h.rewriteCall(pr, callFrom(pr.In.Context()))
}

func (h *Hub) rewriteCall(pr *httputil.ProxyRequest, c *call) {
	out := pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = "backend.invalid"
	out.URL.Path, out.URL.RawPath = c.t.Path, c.t.RawPath
	if c.t.Path == "" {
		out.URL.Path, out.URL.RawPath = "/", ""
	}
	out.URL.RawQuery = c.t.RawQuery
	out.URL.Fragment = ""
	out.Host = pr.In.Host
	if c.t.NoXForwarded {
		// The proxy removed them from the outbound request: put the
		// user's back. (A request another node forwarded carries the
		// user's, as that node did not add any either.)
		for _, k := range proxyHeaders {
			if v, ok := pr.In.Header[k]; ok {
				out.Header[k] = v
			}
		}
		return
	}
	if c.forwarded {
		// Another node forwarded it (the server drops marks that do not
		// verify with the cluster secret; with --cluster-insecure a user
		// may still claim so). Keep the hops it lists and append the
		// address this node saw, as every proxy does, so that the last hop
		// is never the sender's choice; keep the scheme the first node saw. (The Host,
		// hence X-Forwarded-Host, is the user's on every node.)
		if v, ok := pr.In.Header["Forwarded"]; ok {
			out.Header["Forwarded"] = v
		}
		if v, ok := pr.In.Header["X-Forwarded-For"]; ok {
			out.Header["X-Forwarded-For"] = v
		}
		proto := pr.In.Header.Get("X-Forwarded-Proto")
		pr.SetXForwarded()
		if proto == "http" || proto == "https" {
			out.Header.Set("X-Forwarded-Proto", proto)
		}
	} else {
		if v, ok := pr.In.Header["Forwarded"]; ok {
			out.Header["Forwarded"] = v
		}
		pr.SetXForwarded()
	}
}

// proxyHeaders are the headers httputil.ReverseProxy removes from an
// outbound request before Rewrite.
var proxyHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// roundTrip is the proxy's transport: a local backend when there is one,
// else another node that holds the name.
func (h *Hub) roundTrip(req *http.Request) (*http.Response, error) {
	return h.roundTripCall(req, callFrom(req.Context()))
}

func (h *Hub) roundTripCall(req *http.Request, c *call) (*http.Response, error) {
	if req.Body != nil && req.Body != &c.reqBody {
		req.Body = &countingReader{rc: req.Body, n: &c.up}
	}
	reg := h.pick(c.t.Name)
	if reg != nil && h.forward != nil && !c.forwarded && !c.localOnly && !reg.ready() {
		// The local backend cannot take the request now (a long-poll
		// transport with no poll parked): prefer a node that may.
		resp, err := h.forwardRequest(req, c)
		if err == nil {
			resp.Body = wrapBody(resp.Body, c, nil)
			return resp, nil
		}
		if !errors.Is(err, ErrNoBackend) {
			return nil, err
		}
		c.via = "local"
	}
	if reg != nil {
		req.Header.Del(ForwardedHeader)
		if c.t.Local != nil {
			c.t.Local(req)
		}
		for {
			reg.inflight.Add(1)
			resp, err := reg.rt.RoundTrip(req)
			if err == nil {
				resp.Body = wrapBody(resp.Body, c, reg)
				return resp, nil
			}
			reg.inflight.Add(-1)
			if !errors.Is(err, ErrBackendGone) {
				return nil, err
			}
			// A backend on its way out (an agent reconnecting): another
			// of the name, if any, takes the request.
			reg.Close()
			if reg = h.pick(c.t.Name); reg == nil {
				return nil, err
			}
		}
	}
	if h.forward == nil || c.forwarded || c.localOnly {
		return nil, ErrNoBackend
	}
	resp, err := h.forwardRequest(req, c)
	if err != nil {
		return nil, err
	}
	resp.Body = wrapBody(resp.Body, c, nil)
	return resp, nil
}

func (h *Hub) modifyResponse(resp *http.Response) error {
	c := callFrom(resp.Request.Context())
	h.takeDirect(resp, c)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// A 101 has no body of its own; an unknown length would make the
		// proxy add "Connection: close", which clients read as no upgrade.
		resp.ContentLength = 0
		c.upgraded.Store(true)
		// An upgraded connection has no natural end: a drain does not
		// wait for it.
		h.mu.Lock()
		h.uncountLocked(c)
		h.mu.Unlock()
	}
	return nil
}

// takeDirect takes a body that implements io.WriterTo out of resp, for
// writeDirect to write after the headers (a 101's stays).
func (h *Hub) takeDirect(resp *http.Response, c *call) {
	if rb, ok := resp.Body.(*respBody); ok && resp.StatusCode != http.StatusSwitchingProtocols {
		if _, ok := rb.rc.(io.WriterTo); ok {
			// The proxy writes the headers and copies nothing; the hub
			// writes the body after it (writeDirect).
			c.direct, c.directRB = resp, rb
			for k := range resp.Trailer {
				c.announced = append(c.announced, k)
			}
			resp.Body = emptyBody{}
		}
	}
}

// writeDirect writes the body of c.direct to the user, after the proxy
// wrote its headers: a backend's response body that implements
// io.WriterTo (the long-poll transport's, whose bytes lie in the buffers
// its messages were read into) goes to the user straight from where it
// lies, in writes of its own size, and not through a copy into the
// proxy's buffer. The writer it gets can flush (Flush() error), which it
// does when it has nothing more to write at once. The trailers follow as
// the proxy sends them; an error in the middle of the body aborts the
// user's connection, as the proxy does.
func (h *Hub) writeDirect(w http.ResponseWriter, c *call) {
	resp, rb := c.direct, c.directRB
	c.directRB = nil
	dw := &directWriter{w: w, c: c}
	_, err := rb.rc.(io.WriterTo).WriteTo(dw)
	rb.Close()
	if err != nil {
		switch {
		case dw.err != nil: // the user went away or is too slow
		case c.in.Context().Err() != nil:
			c.setOutcome("canceled")
		default:
			c.setOutcome("aborted")
		}
		panic(http.ErrAbortHandler)
	}
	c.setOutcome("ok")
	hdr := w.Header()
	for k, vv := range resp.Trailer {
		if !slices.Contains(c.announced, k) {
			k = http.TrailerPrefix + k
		}
		hdr[k] = vv
	}
}

// directWriter is what writeDirect hands a body: the user's response,
// counted, with Flush.
type directWriter struct {
	w   http.ResponseWriter
	c   *call
	err error // the first write or flush error
}

func (d *directWriter) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	d.c.down.Add(int64(n))
	if err != nil && d.err == nil {
		d.err = err
	}
	return n, err
}

// ReadFrom writes what src holds to the user through the response
// writer's own ReadFrom (net/http's, found under the wrappers that
// Unwrap): from a TCP connection, into an answer of known length on a
// plain TCP connection, the kernel splices the bytes from one socket to
// the other. Elsewhere they are copied through a buffer.
func (d *directWriter) ReadFrom(src io.Reader) (int64, error) {
	var n int64
	var err error
	if rf := readerFrom(d.w); rf != nil {
		n, err = rf.ReadFrom(src)
	} else {
		buf := bufferPool{}.Get()
		n, err = io.CopyBuffer(struct{ io.Writer }{d.w}, src, buf)
		bufferPool{}.Put(buf)
	}
	d.c.down.Add(n)
	if err != nil && d.err == nil {
		d.err = err
	}
	return n, err
}

// readerFrom returns the io.ReaderFrom under w's wrappers, or nil.
func readerFrom(w http.ResponseWriter) io.ReaderFrom {
	for {
		if rf, ok := w.(io.ReaderFrom); ok {
			return rf
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
}

func (d *directWriter) Flush() error {
	err := flush(d.w)
	if err != nil && d.err == nil {
		d.err = err
	}
	return err
}

// uncountLocked takes c out of the calls a drain waits for.
func (h *Hub) uncountLocked(c *call) {
	if !c.counted {
		return
	}
	c.counted = false
	h.active--
	if h.closing && h.active == 0 {
		close(h.drained)
	}
}

// proxyError answers a relay that failed before the response started.
func (h *Hub) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	h.fail(w, r, callFrom(r.Context()), err)
}

// fail answers c's relay, which failed with err before the response
// started; r is the outbound request.
func (h *Hub) fail(w http.ResponseWriter, r *http.Request, c *call, err error) {
	ew := c.t.ErrorWriter
	if ew == nil {
		ew = httpapi.WritePlain
	}
	var e *httpapi.Error
	var tooLarge *http.MaxBytesError
	switch {
	case errors.Is(err, ErrNoBackend):
		c.setOutcome("no_backend")
		if c.t.NoBackend != nil {
			e = c.t.NoBackend(c.t.Name)
		} else {
			e = httpapi.Errorf(http.StatusBadGateway, "no backend named %q", c.t.Name)
		}
	case c.in.Context().Err() != nil:
		c.setOutcome("canceled")
		return // the user went away: nobody to answer
	case errors.As(err, &e):
		c.setOutcome("error")
	case errors.As(err, &tooLarge):
		c.setOutcome("error")
		e = httpapi.ErrRequestTooLarge
	case errors.Is(err, ErrShuttingDown), r.Context().Err() != nil:
		c.setOutcome("refused")
		e = httpapi.ErrShuttingDown
	default:
		c.setOutcome("error")
		h.log.Debug("relay failed", "namespace", h.opts.Namespace, "name", c.t.Name, "err", err)
		e = httpapi.Errorf(http.StatusBadGateway, "relay to backend %q failed: %v", c.t.Name, err)
	}
	ew(w, r, e)
}

// Shutdown stops the hub: new requests are refused with 503, requests in
// flight may finish until ctx ends, then every relay still open (upgraded
// connections included) is cancelled; the directory entries are removed.
// It is idempotent; every call waits for the one shutdown.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.shutdownOnce.Do(func() {
		defer close(h.shutdownDone)
		h.mu.Lock()
		h.closing = true
		if h.active == 0 {
			close(h.drained)
		}
		h.mu.Unlock()
		var err error
		select {
		case <-h.drained:
		case <-ctx.Done():
			h.mu.Lock()
			err = fmt.Errorf("relay %s: %d relays cut at shutdown: %w", h.opts.Namespace, h.active, ctx.Err())
			h.mu.Unlock()
		}
		// Cancel what is left: upgraded connections, and relays that did
		// not finish in time. Transports honour the context, so the Serve
		// calls return promptly.
		h.mu.Lock()
		for c := range h.calls {
			c.cancel()
		}
		h.mu.Unlock()
		h.wg.Wait()
		if h.announce != nil {
			h.announce.stop()
		}
		if h.forward != nil {
			h.forward.CloseIdleConnections()
		}
		h.shutdownErr = err
	})
	<-h.shutdownDone
	return h.shutdownErr
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
