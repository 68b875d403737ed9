// Package channels is the channels front door: the Automattic pinghub wire
// format (websocket subscribe on any path, publish by POST or websocket
// message, the HTML client page, origin check, size limits, ping/pong and
// write deadlines) plus Server-Sent Events and resuming with a "since"
// cursor. It owns the wire format and nothing else; fan-out, queues and
// history live in internal/broker.
package channels

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Defaults, as in pinghub where it had them.
const (
	// DefaultPrefix is where channels are mounted unless AtRoot.
	DefaultPrefix = "/c"
	// DefaultMaxMessageBytes is the largest websocket message (pinghub's
	// 64 KiB); larger ones close the connection with 1009.
	DefaultMaxMessageBytes int64 = 64 << 10
	// DefaultMaxPostBytes is the largest POST body; larger ones get 413.
	DefaultMaxPostBytes int64 = 64 << 10
	// DefaultPingInterval is how often the server pings a websocket.
	DefaultPingInterval = 27 * time.Second
	// DefaultPongTimeout closes a websocket whose ping got no pong.
	DefaultPongTimeout = 30 * time.Second
	// DefaultWriteTimeout bounds every write to a subscriber.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultKeepAlive is how often an idle event stream gets a comment
	// line, so that proxies keep it open.
	DefaultKeepAlive = 27 * time.Second
	// MaxPathRunes is the longest channel path, in Unicode characters.
	MaxPathRunes = 256
)

// Options configures the channels front door.
type Options struct {
	// AtRoot mounts channels at / (a dedicated host, as pinghub was
	// deployed) instead of under Prefix. Ops endpoints and other
	// capabilities' prefixes keep priority.
	AtRoot bool
	// Prefix is the mount point when not AtRoot ("/c": the channel "/x"
	// is at "/c/x").
	Prefix string
	// Origins, when not empty, are the scheme://host[:port] origins allowed
	// to subscribe or publish; requests without an Origin header are always
	// allowed. Compared case-insensitively, default ports normalised.
	Origins []string
	// BroadcastOnly lists channel path prefixes on which websocket clients
	// may listen but not publish (POST still publishes).
	BroadcastOnly []string
	// MaxMessageBytes is the largest incoming websocket message.
	MaxMessageBytes int64
	// MaxPostBytes is the largest POST body.
	MaxPostBytes int64
	// BodyReadTimeout bounds the time to receive a POST body; a client
	// slower than that gets 408. Zero means httpapi.DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// PingInterval, PongTimeout and WriteTimeout are the websocket timers.
	PingInterval time.Duration
	PongTimeout  time.Duration
	WriteTimeout time.Duration
	// KeepAlive is the idle interval of event streams.
	KeepAlive time.Duration
	// PlainWrites makes the writer pool send every frame with write(2),
	// never batching through io_uring (which it does on Linux kernels that
	// allow it): for a sandbox or kernel where io_uring misbehaves.
	PlainWrites bool
}

// DefaultOptions returns pinghub's settings, with postern's POST limit.
func DefaultOptions() Options {
	return Options{
		Prefix:          DefaultPrefix,
		MaxMessageBytes: DefaultMaxMessageBytes,
		MaxPostBytes:    DefaultMaxPostBytes,
		PingInterval:    DefaultPingInterval,
		PongTimeout:     DefaultPongTimeout,
		WriteTimeout:    DefaultWriteTimeout,
		KeepAlive:       DefaultKeepAlive,
	}
}

// Validate reports the first setting that makes no sense.
func (o *Options) Validate() error {
	switch {
	case !o.AtRoot && (!strings.HasPrefix(o.Prefix, "/") || strings.HasSuffix(o.Prefix, "/")):
		return fmt.Errorf("channels prefix must start with / and not end with one, got %q", o.Prefix)
	case o.MaxMessageBytes < 1:
		return errors.New("channels max message size must be positive")
	case o.MaxPostBytes < 1:
		return errors.New("channels max POST size must be positive")
	case o.BodyReadTimeout < 0:
		return errors.New("channels body read timeout must not be negative")
	case o.PingInterval <= 0 || o.PongTimeout <= 0 || o.WriteTimeout <= 0 || o.KeepAlive <= 0:
		return errors.New("channels ping interval, pong timeout, write timeout and keep-alive must be positive")
	}
	for _, p := range o.BroadcastOnly {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("broadcast-only prefix %q must start with /", p)
		}
	}
	for _, org := range o.Origins {
		if _, err := parseOrigin(org); err != nil {
			return fmt.Errorf("channels origin %q: %v", org, err)
		}
	}
	return nil
}

// mount is the path prefix stripped from request paths: "" at the root.
func (o Options) mount() string {
	if o.AtRoot {
		return ""
	}
	return o.Prefix
}
