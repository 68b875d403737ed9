package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	pathpkg "path"
	"strings"
	"sync"

	"github.com/coder/websocket"
)

// DefaultChannelsPrefix is where a server mounts channels unless it runs
// with --channels-at-root.
const DefaultChannelsPrefix = "/c"

// DefaultSubscribeBuffer is how many received messages a Subscription
// holds for a reader that falls behind; beyond it the client stops
// reading, and the server drops it once its own queue is full.
const DefaultSubscribeBuffer = 64

// DefaultMaxChannelMessage is the largest message a subscription accepts.
const DefaultMaxChannelMessage = 1 << 20

// WithChannelsPrefix sets where the server mounts channels: "" for a
// server run with --channels-at-root.
func WithChannelsPrefix(prefix string) Option {
	return func(c *Client) { c.channelsPrefix = strings.TrimSuffix(prefix, "/") }
}

// Channel is one pub/sub channel of the server, named by a path ("/news").
type Channel struct {
	c    *Client
	path string
}

// Channel returns the channel named path (1 to 256 Unicode characters; a
// leading '/' is added when missing). A path not in canonical form names
// the channel of its canonical form ("//a" and "/x/../a" are "/a", a
// trailing slash is kept): the server redirects requests for the other
// forms there, as pinghub did, so the client sends the canonical one.
func (c *Client) Channel(path string) *Channel {
	return &Channel{c: c, path: cleanChannelPath(path)}
}

// cleanChannelPath is the canonical form of a channel path, as the server
// computes it (gorilla/mux's rule): path.Clean, a trailing slash kept.
func cleanChannelPath(p string) string {
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	np := pathpkg.Clean(p)
	if strings.HasSuffix(p, "/") && np != "/" {
		np += "/"
	}
	return np
}

// Path is the channel's name.
func (ch *Channel) Path() string { return ch.path }

// escaped is the channel's URL path below the base URL.
func (ch *Channel) escaped() string {
	parts := strings.Split(ch.path, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return ch.c.channelsPrefix + strings.Join(parts, "/")
}

// Publish sends msg (valid UTF-8 text) to every subscriber of the channel.
// An empty message reaches nobody.
func (ch *Channel) Publish(ctx context.Context, msg []byte) error {
	if msg == nil {
		msg = []byte{}
	}
	resp, data, err := ch.c.do(ctx, request{method: http.MethodPost, path: ch.escaped(), body: msg, contentType: "text/plain; charset=utf-8"})
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return unexpected(resp, data)
	}
	return nil
}

// ChannelMessage is one message received on a channel.
type ChannelMessage struct {
	// ID is the message's id in the channel's history; pass it as
	// SubscribeOptions.Since to resume after it. Empty when the server
	// keeps no history.
	ID string
	// Data is the message.
	Data []byte
	// Binary is true for messages published as binary websocket frames.
	Binary bool
	// Gap is true for a marker (no data) saying that the history no longer
	// holds every message after the cursor asked for: some were missed.
	Gap bool
}

// SubscribeOptions controls Subscribe.
type SubscribeOptions struct {
	// Since resumes after a message id: the server first sends what its
	// history holds after it. "" starts with the next message; "0" asks
	// for the whole history.
	Since string
	// Buffer is the number of received messages held for the reader;
	// 0 means DefaultSubscribeBuffer.
	Buffer int
}

// Subscription receives a channel's messages until its context ends, it
// is closed, or the connection fails.
type Subscription struct {
	conn   *websocket.Conn
	msgs   chan ChannelMessage
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	err    error
	lastID string
}

// Subscribe opens a websocket subscription to the channel. Read messages
// from Messages; when it is closed, Err says why.
func (ch *Channel) Subscribe(ctx context.Context, opts SubscribeOptions) (*Subscription, error) {
	u := *ch.c.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.RawPath = u.Path + ch.escaped()
	u.Path, _ = url.PathUnescape(u.RawPath)
	since := opts.Since
	if since == "" {
		since = "now"
	}
	u.RawQuery = url.Values{"since": {since}}.Encode()
	h := http.Header{}
	if ch.c.token != "" {
		h.Set("Authorization", "Bearer "+ch.c.token)
	}
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: ch.c.hc, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			var body []byte
			if resp.Body != nil {
				body, _ = io.ReadAll(io.LimitReader(resp.Body, 1024))
				resp.Body.Close()
			}
			return nil, unexpected(resp, body)
		}
		return nil, err
	}
	conn.SetReadLimit(DefaultMaxChannelMessage)
	buf := opts.Buffer
	if buf <= 0 {
		buf = DefaultSubscribeBuffer
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Subscription{conn: conn, msgs: make(chan ChannelMessage, buf), cancel: cancel, done: make(chan struct{})}
	stop := context.AfterFunc(ctx, cancel)
	go func() {
		defer stop()
		s.read(rctx)
	}()
	return s, nil
}

// ErrSubscriptionClosed is what Err reports after Close.
var ErrSubscriptionClosed = errors.New("postern: subscription closed")

// ClosedError says the server ended a subscription, with its websocket
// close code (1008: too slow, 1001: shutting down) and reason.
type ClosedError struct {
	Code   int
	Reason string
}

func (e *ClosedError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("postern: subscription ended by the server (%d)", e.Code)
	}
	return fmt.Sprintf("postern: subscription ended by the server (%d %s)", e.Code, e.Reason)
}

func (s *Subscription) read(ctx context.Context) {
	defer close(s.done)
	defer close(s.msgs)
	defer s.conn.CloseNow()
	for {
		typ, data, err := s.conn.Read(ctx)
		if err != nil {
			s.fail(ctx, err)
			return
		}
		if typ != websocket.MessageText || len(data) == 0 {
			continue // keep-alive answers
		}
		m, err := parseEnvelope(data)
		if err != nil {
			s.fail(ctx, err)
			return
		}
		if m.ID != "" {
			s.mu.Lock()
			s.lastID = m.ID
			s.mu.Unlock()
		}
		select {
		case s.msgs <- m:
		case <-ctx.Done():
			s.fail(ctx, ctx.Err())
			return
		}
	}
}

func (s *Subscription) fail(ctx context.Context, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce):
		s.err = &ClosedError{Code: int(ce.Code), Reason: ce.Reason}
	case ctx.Err() != nil:
		s.err = ctx.Err()
	default:
		s.err = err
	}
}

// parseEnvelope decodes one frame of a subscription with ids:
// {"id": "...", "data": "..."}, {"binary": true, "data": "<base64>"} or
// {"gap": true}.
func parseEnvelope(b []byte) (ChannelMessage, error) {
	var e struct {
		ID     string `json:"id"`
		Data   string `json:"data"`
		Binary bool   `json:"binary"`
		Gap    bool   `json:"gap"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return ChannelMessage{}, fmt.Errorf("postern: bad frame from the server: %v", err)
	}
	if e.Gap {
		return ChannelMessage{Gap: true}, nil
	}
	m := ChannelMessage{ID: e.ID, Binary: e.Binary, Data: []byte(e.Data)}
	if e.Binary {
		d, err := base64.StdEncoding.DecodeString(e.Data)
		if err != nil {
			return ChannelMessage{}, fmt.Errorf("postern: bad binary frame from the server: %v", err)
		}
		m.Data = d
	}
	return m, nil
}

// Messages delivers the channel's messages in order. It is closed when the
// subscription ends.
func (s *Subscription) Messages() <-chan ChannelMessage { return s.msgs }

// Err reports why the subscription ended: the context's error,
// ErrSubscriptionClosed, a *ClosedError from the server, or a connection
// error. It is nil while Messages is open.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// LastID is the id of the last message received: resume after it with
// SubscribeOptions.Since.
func (s *Subscription) LastID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastID
}

// Close ends the subscription and waits for its reader to stop.
func (s *Subscription) Close() error {
	s.mu.Lock()
	if s.err == nil {
		s.err = ErrSubscriptionClosed
	}
	s.mu.Unlock()
	s.conn.Close(websocket.StatusNormalClosure, "")
	s.cancel()
	<-s.done
	return nil
}
