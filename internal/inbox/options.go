// Package inbox is the inbox front door: the echoes wire format (addressed
// JSON messages with idempotency keys and acknowledgements, sent with
// /send, read with /receive, both at once with /exchange) on top of the
// queue core. It owns the wire format and the inbox rules (identity, copies
// per destination, acks, idempotency window, limits) and nothing else:
// storage, expiry, atomicity and wake-ups live in internal/queue and the
// engines below it.
//
// Every actor has one queue, keyed "inbox/<actor in url-safe base64>", that
// holds the messages addressed to it and the acks of the messages it sent,
// in arrival order. A message copy is identified in its destination's queue
// by (origin, idempotency key), an ack in its origin's queue by
// (destination, idempotency key); both identities are the queue's dedup
// key, remembered by the engine for Options.Expiration from the first send
// (see store.AppendOptions.DedupWindow), at most Options.MaxKeys of read
// entries per inbox (store.AppendOptions.DedupMax), the oldest forgotten
// first:
//
//   - while the copy is unread, sending it again replaces it in place
//     (new body, expectsAck, sentAt and expiry), as the original did;
//   - once it was read, sending it again within the window stores
//     nothing (the original delivered it a second time);
//   - after the window the key is forgotten and the message is new.
package inbox

import (
	"errors"
	"fmt"
	"time"
)

// Defaults. The expiration is the original's; the limits are postern's.
const (
	// DefaultExpiration is how long messages, acks and idempotency keys
	// are kept (the original's REDIS_EXPIRATION_SECONDS, 604800).
	DefaultExpiration = 7 * 24 * time.Hour
	// DefaultMaxBodyBytes is the largest request body; larger get 413.
	DefaultMaxBodyBytes int64 = 256 << 10
	// DefaultMaxDestinations is the most destinations one envelope may
	// name.
	DefaultMaxDestinations = 100
	// DefaultMaxReceive is the most messages and acks one receive
	// returns; the rest wait for the next receive (X-Inbox-Remaining
	// says how many there were).
	DefaultMaxReceive = 100
	// DefaultMaxLen is the most messages and acks an inbox holds; sends
	// to a full inbox are refused with 507, and acks for a full inbox are
	// dropped (counted in postern_inbox_acks_dropped_total): the receive
	// that produced them is not held up by an origin that does not read.
	DefaultMaxLen = 10000
	// DefaultMaxActorBytes is the longest actor name (From header or
	// destination), in bytes.
	DefaultMaxActorBytes = 512
	// DefaultMaxKeys is the most idempotency keys of read messages (and
	// of acks) one inbox remembers: beyond, the oldest are forgotten
	// (a message sent again with a forgotten key is delivered again), so
	// what a sender can make postern remember is bounded per inbox, not
	// only by the expiration.
	DefaultMaxKeys = 10000
)

// Options configures the inbox front door.
type Options struct {
	// Expiration is how long a message or ack waits to be read, and how
	// long its idempotency key is remembered, counted from its first send.
	Expiration time.Duration
	// MaxBodyBytes is the largest request body.
	MaxBodyBytes int64
	// BodyReadTimeout bounds the time to receive a body; a client slower
	// than that gets 408. Zero means httpapi.DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// MaxDestinations is the most destinations per envelope.
	MaxDestinations int
	// MaxReceive is the most entries one receive or exchange returns.
	MaxReceive int
	// MaxLen is the most entries one inbox holds.
	MaxLen int
	// MaxActorBytes is the longest actor name.
	MaxActorBytes int
	// MaxKeys is the most idempotency keys of read entries one inbox
	// remembers (the engine's store.AppendOptions.DedupMax).
	MaxKeys int
	// Now is the clock of sentAt and receivedAt; nil means time.Now.
	// Expiry is the engine's and follows the engine's clock.
	Now func() time.Time
}

// DefaultOptions returns the defaults: the original's expiration and
// trust-the-header identities, with postern's limits.
func DefaultOptions() Options {
	return Options{
		Expiration:      DefaultExpiration,
		MaxBodyBytes:    DefaultMaxBodyBytes,
		MaxDestinations: DefaultMaxDestinations,
		MaxReceive:      DefaultMaxReceive,
		MaxLen:          DefaultMaxLen,
		MaxActorBytes:   DefaultMaxActorBytes,
		MaxKeys:         DefaultMaxKeys,
	}
}

// Validate fills the clock when it is nil and reports the first setting
// that makes no sense.
func (o *Options) Validate() error {
	if o.Now == nil {
		o.Now = time.Now
	}
	switch {
	case o.Expiration < time.Second:
		return fmt.Errorf("inbox expiration must be at least 1s, got %v", o.Expiration)
	case o.MaxBodyBytes < 1:
		return errors.New("inbox max body size must be positive")
	case o.BodyReadTimeout < 0:
		return errors.New("inbox body read timeout must not be negative")
	case o.MaxDestinations < 1:
		return fmt.Errorf("inbox max destinations must be at least 1, got %d", o.MaxDestinations)
	case o.MaxReceive < 1:
		return fmt.Errorf("inbox max receive must be at least 1, got %d", o.MaxReceive)
	case o.MaxLen < 1:
		return fmt.Errorf("inbox max length must be at least 1, got %d", o.MaxLen)
	case o.MaxActorBytes < 1:
		return fmt.Errorf("inbox max actor name length must be at least 1, got %d", o.MaxActorBytes)
	case o.MaxKeys < 1:
		return fmt.Errorf("inbox max idempotency keys must be at least 1, got %d", o.MaxKeys)
	}
	return nil
}
