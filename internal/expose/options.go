package expose

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/queue"
)

// Defaults of Options. The brickchain figures are the original's.
const (
	// DefaultMaxRequestBytes is the largest user request body relayed to a
	// brickchain agent (500 KiB); larger bodies get 413 (the original cut
	// them silently).
	DefaultMaxRequestBytes = 512000
	// DefaultMaxFrameBytes is the largest frame a brickchain agent may
	// send: an http-response over it is answered 502 at once (the
	// original let the user wait for the timeout); a ws-message over it
	// tears that websocket down.
	DefaultMaxFrameBytes = 512000
	// DefaultResponseTimeout is how long a brickchain agent has to answer
	// an http-request or ws-request before the user gets 504 "timeout".
	DefaultResponseTimeout = 30 * time.Second
	// DefaultPingInterval is how often brickchain agents get a ping frame.
	DefaultPingInterval = 10 * time.Second
	// DefaultRegisterTimeout closes a brickchain socket that has not
	// registered by then.
	DefaultRegisterTimeout = 10 * time.Second
	// DefaultRegistrationTTL is how long a registration lives without
	// sign of its agent; it is renewed by every frame and pong the agent
	// sends, and is the lifetime of directory entries between nodes.
	DefaultRegistrationTTL = time.Minute
	// DefaultClientRate and DefaultClientRatePeriod are the per-client
	// limit of brickchain clients: 500 requests per 5 minutes.
	DefaultClientRate       = 500
	DefaultClientRatePeriod = 5 * time.Minute
	// DefaultMaxRegistrations bounds the ids one brickchain socket may
	// register (one key with several sessions).
	DefaultMaxRegistrations = 32
	// DefaultWSBufferBytes bounds the messages an agent has sent to one
	// user websocket that the user has not read yet; beyond it the user is
	// too slow and is disconnected.
	DefaultWSBufferBytes = 1 << 20
	// DefaultWriteTimeout bounds one frame write to an agent or user.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultAgentKeepAlive is the native agents' yamux keep-alive.
	DefaultAgentKeepAlive = 15 * time.Second
	// DefaultStreamWindow is the native agents' yamux stream window: large
	// enough for one stream to fill a fast link.
	DefaultStreamWindow = 4 << 20
)

// Options configures the expose capability.
type Options struct {
	// Domain, when set, routes requests whose Host is NAME.Domain to the
	// agent NAME, and names agents' public URLs.
	Domain string
	// BaseURL is this server's public base URL ("https://proxy.example.com").
	// Brickchain mandate tokens must name a uri that starts with it; empty:
	// the scheme and Host the agent connected with.
	BaseURL string

	// MaxRequestBytes limits request bodies relayed to brickchain agents.
	MaxRequestBytes int64
	// MaxFrameBytes limits the frames brickchain agents send.
	MaxFrameBytes int64
	// ResponseTimeout bounds a brickchain agent's answer.
	ResponseTimeout time.Duration
	// PingInterval spaces the pings to brickchain agents.
	PingInterval time.Duration
	// RegisterTimeout bounds the time to a brickchain registration.
	RegisterTimeout time.Duration
	// RegistrationTTL is how long a registration lives without sign of life.
	RegistrationTTL time.Duration
	// MaxRegistrations bounds the ids per brickchain socket.
	MaxRegistrations int
	// ClientRate requests per ClientRatePeriod are allowed to each
	// brickchain client id (0: unlimited); more get 429.
	ClientRate       int
	ClientRatePeriod time.Duration
	// WSBufferBytes bounds what waits for a slow user websocket.
	WSBufferBytes int
	// WriteTimeout bounds one frame write.
	WriteTimeout time.Duration

	// AgentKeepAlive is the native agents' keep-alive interval.
	AgentKeepAlive time.Duration
	// StreamWindow is the native agents' yamux stream window in bytes.
	StreamWindow int
	// AnonymousAgents lets native agents without a scoped token claim a
	// name from any address when no token policy is configured. Without
	// it (and without a policy) only agents on loopback addresses may.
	AnonymousAgents bool
	// TrustedProxies are the proxies whose X-Forwarded-For names the
	// client. Under the loopback rule for native agents, an agent behind a
	// trusted proxy must itself be on this host, and a handshake a proxy
	// on this host passed on without being trusted is refused.
	TrustedProxies []netip.Prefix

	// Policy holds postern's scoped tokens: a native agent needs "serve" on
	// /expose/NAME, a brickchain registration "serve" on /expose/<id> (a
	// token on the subscribe handshake, or an anonymous grant naming the
	// id), a user request "call" on /expose/NAME (grant it to anonymous for
	// public sites). Nil: user requests and brickchain registrations are
	// open, as in the original, and see AnonymousAgents for native agents.
	Policy *auth.Policy
	// Mandates is the queue core where the brickchain mandate tokens used
	// to register are remembered until they expire (MandateQueue), so a
	// token registers from one connection only; nil: not remembered.
	Mandates *queue.Core
	// Metrics is the registry the capability's metrics go to; nil: none.
	Metrics prometheus.Registerer
	// Logger receives the capability's logs; nil: slog.Default().
	Logger *slog.Logger
	// Now is the clock of token expiry; nil: time.Now.
	Now func() time.Time
}

// DefaultOptions returns the defaults.
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
		AgentKeepAlive:   DefaultAgentKeepAlive,
		StreamWindow:     DefaultStreamWindow,
	}
}

func (o *Options) fill() error {
	d := DefaultOptions()
	o.Domain = strings.ToLower(strings.Trim(strings.TrimSpace(o.Domain), "."))
	if o.Domain != "" && (strings.ContainsAny(o.Domain, "/: ") || strings.Contains(o.Domain, "..")) {
		return fmt.Errorf("expose domain %q: want a DNS name such as tunnels.example.com", o.Domain)
	}
	o.BaseURL = strings.TrimSpace(o.BaseURL)
	if o.BaseURL != "" && !strings.HasPrefix(o.BaseURL, "http://") && !strings.HasPrefix(o.BaseURL, "https://") {
		return fmt.Errorf("expose base URL %q: want http:// or https://", o.BaseURL)
	}
	set := func(p *time.Duration, def time.Duration) {
		if *p == 0 {
			*p = def
		}
	}
	set(&o.ResponseTimeout, d.ResponseTimeout)
	set(&o.PingInterval, d.PingInterval)
	set(&o.RegisterTimeout, d.RegisterTimeout)
	set(&o.RegistrationTTL, d.RegistrationTTL)
	set(&o.ClientRatePeriod, d.ClientRatePeriod)
	set(&o.WriteTimeout, d.WriteTimeout)
	set(&o.AgentKeepAlive, d.AgentKeepAlive)
	if o.MaxRequestBytes == 0 {
		o.MaxRequestBytes = d.MaxRequestBytes
	}
	if o.MaxFrameBytes == 0 {
		o.MaxFrameBytes = d.MaxFrameBytes
	}
	if o.MaxRegistrations == 0 {
		o.MaxRegistrations = d.MaxRegistrations
	}
	if o.WSBufferBytes == 0 {
		o.WSBufferBytes = d.WSBufferBytes
	}
	if o.StreamWindow == 0 {
		o.StreamWindow = d.StreamWindow
	}
	if o.MaxRequestBytes < 0 || o.MaxFrameBytes < 1024 || o.ClientRate < 0 || o.StreamWindow < 256<<10 ||
		o.ResponseTimeout < 0 || o.PingInterval < 0 || o.RegisterTimeout < 0 || o.RegistrationTTL < 0 {
		return errors.New("expose: limits must not be negative; the frame limit is at least 1024 bytes, the stream window at least 256 KiB")
	}
	if o.RegistrationTTL < 2*o.PingInterval {
		return errors.New("expose: the registration TTL must be at least two ping intervals")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}
