// Package gcr is the relay front door: the Cloud Robotics http-relay
// protocol (googlecloudrobotics/core's http-relay-server), wire-compatible
// with that project's unmodified relay client, as a long-poll transport of
// the relay core (internal/relay).
//
// User side: ANY /client/<name>/<path> and, on paths no other capability
// owns, any request with an X-Server-Name header (how gRPC clients use it).
// Backend side: GET /server/request?server=<name> (long-poll for the next
// request, a protobuf HttpRequest), POST /server/response (a protobuf
// HttpResponse: the status and headers, then body chunks, then eof and
// trailers), /server/requeststream?id=<id> (the user's bytes after a 101
// upgrade). postern's own relay client may ask for more than the
// protocol's one message per exchange (streamed bodies, batches of
// requests and responses: stream.go, batch.go); the original never asks
// and never gets them. The package owns the wire format and the correlation of
// polls, requests and response chunks; relaying, streaming, upgrades,
// cancellation and forwarding between nodes are the core's.
package gcr

import (
	"errors"
	"time"
)

// Defaults, as in the original server where it has them.
const (
	// DefaultBlockSize is the largest piece of the user's upgraded stream
	// served by one /server/requeststream call (--block_size).
	DefaultBlockSize = 10 * 1024
	// DefaultInactiveRequestTimeout ends a request that got no response
	// chunk for this long (--inactive_request_timeout).
	DefaultInactiveRequestTimeout = 60 * time.Second
	// DefaultInactiveBackendTimeout forgets a backend that has not polled
	// for this long (--inactive_backend_timeout).
	DefaultInactiveBackendTimeout = 30 * time.Minute
	// DefaultPollTimeout is how long /server/request waits before 408.
	DefaultPollTimeout = 30 * time.Second
	// DefaultPickupTimeout is how long a user request waits for a relay
	// client to take it before 500.
	DefaultPickupTimeout = 10 * time.Second
	// DefaultRequestStreamTimeout is how long /server/requeststream waits
	// for the user's bytes before answering empty.
	DefaultRequestStreamTimeout = 30 * time.Second
	// DefaultMaxRequestBodyBytes bounds a user's request body, which the
	// protocol carries whole in one message (the original had no limit).
	DefaultMaxRequestBodyBytes int64 = 64 << 20
	// DefaultMaxResponseMessageBytes bounds one /server/response message.
	DefaultMaxResponseMessageBytes int64 = 64 << 20
	// DefaultMaxResponseReserveBytes bounds the memory set aside, all
	// /server/response messages together, for bodies announced by their
	// Content-Length and still arriving. A message is read before it can
	// be authorized (its id names the backend), so announcing is free to
	// anyone: past this, bodies are read into memory that grows only as
	// their bytes arrive.
	DefaultMaxResponseReserveBytes int64 = 64 << 20
	// MaxNameLen is the longest backend name.
	MaxNameLen = 256
)

// Options configures the relay front door.
type Options struct {
	// BlockSize is the largest piece of a user's upgraded stream handed to
	// the relay client at once.
	BlockSize int
	// InactiveRequestTimeout: a request that gets no response chunk for
	// this long is ended (504 before the first chunk; the user's
	// connection is cut after it).
	InactiveRequestTimeout time.Duration
	// InactiveBackendTimeout: a backend that has not polled for this long
	// is forgotten (then 503 unknown client again).
	InactiveBackendTimeout time.Duration
	// PollTimeout is how long a poll waits for a request before 408.
	PollTimeout time.Duration
	// PickupTimeout is how long a request waits for a poll before 500.
	PickupTimeout time.Duration
	// RequestStreamTimeout is how long a requeststream call waits for the
	// user's bytes before answering empty.
	RequestStreamTimeout time.Duration
	// MaxRequestBodyBytes bounds a user's request body (413 above).
	MaxRequestBodyBytes int64
	// MaxResponseMessageBytes bounds one posted HttpResponse (400 above, so
	// the relay client stops retrying).
	MaxResponseMessageBytes int64
	// MaxResponseReserveBytes bounds the memory set aside up front for
	// posted HttpResponses still arriving, all of them together (0: none
	// is, every message grows as it arrives). A message must arrive within
	// InactiveRequestTimeout (408 otherwise).
	MaxResponseReserveBytes int64
	// ForwardedHeaders sends backends X-Forwarded-For (the address postern
	// saw), X-Forwarded-Host and X-Forwarded-Proto. Off, as in the
	// original, which added none: the user's headers reach the backend as
	// they came, X-Forwarded-* included.
	ForwardedHeaders bool
}

// DefaultOptions returns the original server's defaults, open to all.
func DefaultOptions() Options {
	return Options{
		BlockSize:               DefaultBlockSize,
		InactiveRequestTimeout:  DefaultInactiveRequestTimeout,
		InactiveBackendTimeout:  DefaultInactiveBackendTimeout,
		PollTimeout:             DefaultPollTimeout,
		PickupTimeout:           DefaultPickupTimeout,
		RequestStreamTimeout:    DefaultRequestStreamTimeout,
		MaxRequestBodyBytes:     DefaultMaxRequestBodyBytes,
		MaxResponseMessageBytes: DefaultMaxResponseMessageBytes,
		MaxResponseReserveBytes: DefaultMaxResponseReserveBytes,
	}
}

// Validate reports the first setting that makes no sense.
func (o *Options) Validate() error {
	switch {
	case o.BlockSize < 1:
		return errors.New("relay block size must be positive")
	case o.InactiveRequestTimeout <= 0:
		return errors.New("relay inactive request timeout must be positive")
	case o.InactiveBackendTimeout <= 0:
		return errors.New("relay inactive backend timeout must be positive")
	case o.PollTimeout <= 0:
		return errors.New("relay poll timeout must be positive")
	case o.PickupTimeout <= 0:
		return errors.New("relay pickup timeout must be positive")
	case o.RequestStreamTimeout <= 0:
		return errors.New("relay request stream timeout must be positive")
	case o.MaxRequestBodyBytes < 1:
		return errors.New("relay max request body must be positive")
	case o.MaxResponseMessageBytes < 1:
		return errors.New("relay max response message must be positive")
	case o.MaxResponseReserveBytes < 0:
		return errors.New("relay response reserve must not be negative")
	}
	return nil
}
