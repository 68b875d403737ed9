// Package tunnel is the tunnels front door: the tunnelhead http-event-relay
// wire format (routes, status codes, headers, body texts, limits and auth
// modes) on top of the queue core. It owns the wire format and nothing else;
// queue semantics live in internal/queue.
package tunnel

import (
	"errors"
	"fmt"
	"time"
)

// Defaults, as in the original relay.
const (
	DefaultMaxLen               = 1000
	DefaultBackpressure         = true
	DefaultMaxPollTimeout       = 60 * time.Second
	DefaultPollTimeout          = 30 * time.Second
	DefaultContentType          = "text/plain"
	DefaultReplyTTL             = time.Hour
	DefaultMaxBodyBytes   int64 = 128 << 10
)

// Idempotent produce (postern's own): a produce with an Idempotency-Key
// stores its message once; a repeat within the window answers as the
// first did.
const (
	// DefaultIdempotencyWindow is how long a tunnel remembers a key,
	// counted from its first produce.
	DefaultIdempotencyWindow = 24 * time.Hour
	// DefaultIdempotencyKeys is how many keys of delivered messages a
	// tunnel remembers at most; beyond, the oldest are forgotten first.
	// Keys of queued messages are remembered while they are queued.
	DefaultIdempotencyKeys = 10000
	// MaxIdempotencyKeyBytes is the longest key; longer get 400.
	MaxIdempotencyKeyBytes = 256
)

// Options configures the tunnels front door.
type Options struct {
	// AccessToken, when set, is accepted as "Authorization: Bearer <token>"
	// on every tunnel route.
	AccessToken string
	// SignatureSecret, when set, authenticates requests whose
	// X-Hub-Signature-256 is the HMAC-SHA256 of their body under it.
	SignatureSecret string
	// PublicIDs are tunnels that need no auth.
	PublicIDs []string
	// MaxLen is the largest queue length; with backpressure off the oldest
	// messages beyond it are trimmed (and counted).
	MaxLen int
	// Backpressure refuses produce with 507 when the queue is full.
	Backpressure bool
	// MaxPollTimeout clamps the timeout query parameter.
	MaxPollTimeout time.Duration
	// PollTimeout is the wait when the timeout parameter is absent.
	PollTimeout time.Duration
	// DefaultContentType is served for messages and replies stored without
	// a Content-Type.
	DefaultContentType string
	// ReplyTTL is how long a reply is kept.
	ReplyTTL time.Duration
	// MaxBodyBytes is the largest request body; larger ones get 413.
	MaxBodyBytes int64
	// BodyReadTimeout bounds the time to receive a body; a client slower
	// than that gets 408. Zero means httpapi.DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// IdempotencyWindow is how long a produce's Idempotency-Key is
	// remembered, from its first produce (a queued message's key is
	// remembered while it is queued in any case).
	IdempotencyWindow time.Duration
	// IdempotencyKeys bounds the keys of delivered messages a tunnel
	// remembers; the oldest are forgotten first.
	IdempotencyKeys int
}

// DefaultOptions returns the original relay's defaults: no auth,
// backpressure on at 1000 messages.
func DefaultOptions() Options {
	return Options{
		MaxLen:             DefaultMaxLen,
		Backpressure:       DefaultBackpressure,
		MaxPollTimeout:     DefaultMaxPollTimeout,
		PollTimeout:        DefaultPollTimeout,
		DefaultContentType: DefaultContentType,
		ReplyTTL:           DefaultReplyTTL,
		MaxBodyBytes:       DefaultMaxBodyBytes,
		IdempotencyWindow:  DefaultIdempotencyWindow,
		IdempotencyKeys:    DefaultIdempotencyKeys,
	}
}

// Validate reports the first setting that makes no sense.
func (o *Options) Validate() error {
	switch {
	case o.MaxLen < 1:
		return fmt.Errorf("tunnel max length must be at least 1, got %d", o.MaxLen)
	case o.MaxPollTimeout < 0:
		return errors.New("tunnel max poll timeout must not be negative")
	case o.PollTimeout < 0:
		return errors.New("tunnel default poll timeout must not be negative")
	case o.ReplyTTL <= 0:
		return errors.New("tunnel reply TTL must be positive")
	case o.MaxBodyBytes < 1:
		return errors.New("tunnel max body size must be positive")
	case o.IdempotencyWindow < 0:
		return errors.New("tunnel idempotency window must not be negative")
	case o.IdempotencyKeys < 1:
		return fmt.Errorf("tunnel idempotency keys must be at least 1, got %d", o.IdempotencyKeys)
	}
	for _, id := range o.PublicIDs {
		if !ValidID(id) {
			return fmt.Errorf("public tunnel id %q is not a valid tunnel id", id)
		}
	}
	return nil
}
