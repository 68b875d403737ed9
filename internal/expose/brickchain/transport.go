package brickchain

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/expose/live"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/relay"
)

// Defaults of Options: the original's figures, and postern's limits where
// it had none.
const (
	// DefaultMaxRequestBytes is the largest user request body relayed to
	// an agent (500 KiB); larger bodies get 413 (the original cut them
	// silently).
	DefaultMaxRequestBytes = 512000
	// DefaultMaxFrameBytes is the largest frame an agent may send: an
	// http-response over it is answered 502 at once (the original let the
	// user wait for the timeout); a ws-message over it tears that
	// websocket down.
	DefaultMaxFrameBytes = 512000
	// DefaultResponseTimeout is how long an agent has to answer an
	// http-request or ws-request before the user gets 504 "timeout".
	DefaultResponseTimeout = 30 * time.Second
	// DefaultPingInterval is how often agents get a ping frame.
	DefaultPingInterval = 10 * time.Second
	// DefaultRegisterTimeout closes a socket that has not registered by
	// then.
	DefaultRegisterTimeout = 10 * time.Second
	// DefaultRegistrationTTL is how long a registration lives without sign
	// of its agent; it is renewed by every frame and pong the agent sends,
	// and is the lifetime of directory entries between nodes.
	DefaultRegistrationTTL = time.Minute
	// DefaultClientRate and DefaultClientRatePeriod are the per-client
	// limit: 500 requests per 5 minutes.
	DefaultClientRate       = 500
	DefaultClientRatePeriod = 5 * time.Minute
	// DefaultMaxRegistrations bounds the ids one socket may register (one
	// key with several sessions).
	DefaultMaxRegistrations = 32
	// DefaultWSBufferBytes bounds the messages an agent has sent to one
	// user websocket that the user has not read yet; beyond it the user is
	// too slow and is disconnected.
	DefaultWSBufferBytes = 1 << 20
	// DefaultWriteTimeout bounds one frame write to an agent or user.
	DefaultWriteTimeout = 10 * time.Second
)

// Options configures the transport. A zero field takes its Default*
// (ClientRate: zero is unlimited, and DefaultOptions has the original's).
type Options struct {
	// MaxRequestBytes limits the request bodies relayed to agents.
	MaxRequestBytes int64
	// MaxFrameBytes limits the frames agents send.
	MaxFrameBytes int64
	// ResponseTimeout bounds an agent's answer.
	ResponseTimeout time.Duration
	// PingInterval spaces the pings to agents.
	PingInterval time.Duration
	// RegisterTimeout bounds the time to a registration.
	RegisterTimeout time.Duration
	// RegistrationTTL is how long a registration lives without sign of
	// life.
	RegistrationTTL time.Duration
	// MaxRegistrations bounds the ids per socket.
	MaxRegistrations int
	// ClientRate requests per ClientRatePeriod are allowed to each client
	// id (0: unlimited); more get 429.
	ClientRate       int
	ClientRatePeriod time.Duration
	// WSBufferBytes bounds what waits for a slow user websocket.
	WSBufferBytes int
	// WriteTimeout bounds one frame write.
	WriteTimeout time.Duration

	// Mandates is the queue core where the mandate tokens used to register
	// are remembered until they expire (MandateQueue), so a token
	// registers from one connection only; nil: not remembered.
	Mandates *queue.Core
	// Now is the clock of token expiry; nil: time.Now.
	Now func() time.Time
}

// DefaultOptions returns the original's settings.
func DefaultOptions() Options {
	return Options{
		MaxRequestBytes:  DefaultMaxRequestBytes,
		MaxFrameBytes:    DefaultMaxFrameBytes,
		ResponseTimeout:  DefaultResponseTimeout,
		PingInterval:     DefaultPingInterval,
		RegisterTimeout:  DefaultRegisterTimeout,
		RegistrationTTL:  DefaultRegistrationTTL,
		MaxRegistrations: DefaultMaxRegistrations,
		ClientRate:       DefaultClientRate,
		ClientRatePeriod: DefaultClientRatePeriod,
		WSBufferBytes:    DefaultWSBufferBytes,
		WriteTimeout:     DefaultWriteTimeout,
	}
}

// Validate fills the settings left zero with their defaults and reports
// the first one that makes no sense.
func (o *Options) Validate() error {
	d := DefaultOptions()
	capability.Default(&o.ResponseTimeout, d.ResponseTimeout)
	capability.Default(&o.PingInterval, d.PingInterval)
	capability.Default(&o.RegisterTimeout, d.RegisterTimeout)
	capability.Default(&o.RegistrationTTL, d.RegistrationTTL)
	capability.Default(&o.ClientRatePeriod, d.ClientRatePeriod)
	capability.Default(&o.WriteTimeout, d.WriteTimeout)
	capability.Default(&o.MaxRequestBytes, d.MaxRequestBytes)
	capability.Default(&o.MaxFrameBytes, d.MaxFrameBytes)
	capability.Default(&o.MaxRegistrations, d.MaxRegistrations)
	capability.Default(&o.WSBufferBytes, d.WSBufferBytes)
	if o.Now == nil {
		o.Now = time.Now
	}
	switch {
	case o.MaxRequestBytes < 0 || o.MaxFrameBytes < 1024 || o.ClientRate < 0 ||
		o.ResponseTimeout < 0 || o.PingInterval < 0 || o.RegisterTimeout < 0 || o.RegistrationTTL < 0:
		return errors.New("expose: limits must not be negative; the frame limit is at least 1024 bytes")
	case o.RegistrationTTL < 2*o.PingInterval:
		return errors.New("expose: the registration TTL must be at least two ping intervals")
	}
	return nil
}

// Counters receives what the transport counts: the expose capability's
// metrics, for this transport.
type Counters interface {
	// Registration counts a registration attempt by result.
	Registration(result string)
	// Request counts a user request by the outcome the transport decided.
	Request(outcome string)
	// Agents adds delta to the client ids registered on this node.
	Agents(delta int)
}

// Site is where the users of one agent connection reach it: the base URL
// its mandate tokens must name, and the expose domain (empty: agents are
// reached by path on the base URL's host).
type Site struct {
	BaseURL string
	Domain  string
}

// Transport serves Brickchain agents: each websocket on the subscribe
// endpoint is a connection whose handler goroutine reads frames, with one
// writer goroutine and a pinger beside it; each client id it registers is
// a backend on the hub (an http.RoundTripper speaking http-request and
// http-response frames). Websockets to an agent cannot ride the hub (the
// wire carries messages, not bytes), so the front door hands them to the
// backend's ServeWebsocket when the id is held on this node.
type Transport struct {
	hub      *relay.Hub
	opts     Options
	policy   *auth.Policy
	log      *slog.Logger
	count    Counters
	limiter  *clientLimiter
	mandates *mandateLedger

	ctx    context.Context // ends at shutdown: agent connections stop
	cancel context.CancelFunc
	live   live.Set[*conn] // connection handlers; user websockets are held
}

// NewTransport returns the transport, registering agents on hub and
// counting with count (nil: nothing counted). Under deps.Policy a
// registration needs serve on /expose/<id>.
func NewTransport(hub *relay.Hub, opts Options, deps capability.Deps, count Counters) (*Transport, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if count == nil {
		count = noCounters{}
	}
	t := &Transport{
		hub:      hub,
		opts:     opts,
		policy:   deps.Policy,
		log:      deps.Log(),
		count:    count,
		limiter:  newClientLimiter(opts.ClientRate, opts.ClientRatePeriod, opts.Now),
		mandates: &mandateLedger{q: opts.Mandates, max: DefaultMaxMandates},
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

type noCounters struct{}

func (noCounters) Registration(string) {}
func (noCounters) Request(string)      {}
func (noCounters) Agents(int)          {}

// Allow takes one request of client id's rate (Options.ClientRate); false:
// the user gets 429.
func (t *Transport) Allow(id string) bool { return t.limiter.allow(id) }

// errClosing refuses agents and user websockets during shutdown.
var errClosing = httpapi.ErrShuttingDown

// Close refuses new agents and user websockets, and closes every agent
// connection with "going away" (the hub has drained the requests in flight
// before: the front door shuts it down first); it waits for the close
// handshakes, at most five seconds each, all at once. Wait then waits for
// the handlers. Close is idempotent.
func (t *Transport) Close() {
	t.live.Close((*conn).goAway)
	t.cancel()
}

// Wait waits for the connection handlers and the user websockets they
// carry; after Close they all end.
func (t *Transport) Wait() { t.live.Wait() }
