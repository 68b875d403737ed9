package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Tunnel is one tunnel of the server: a one-way queue of messages from
// producers to consumers, with optional replies.
type Tunnel struct {
	c  *Client
	id string
}

// Tunnel returns the tunnel named id (1 to 1024 of A-Z a-z 0-9 - _).
func (c *Client) Tunnel(id string) *Tunnel { return &Tunnel{c: c, id: id} }

// ID is the tunnel's name.
func (t *Tunnel) ID() string { return t.id }

func (t *Tunnel) path(parts ...string) string {
	p := "/t/" + url.PathEscape(t.id)
	for _, s := range parts {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// Message is a message or a reply.
type Message struct {
	// ID is the message id ("<ms>-<seq>"); empty for replies.
	ID          string
	ContentType string
	Body        []byte
}

// SendOptions controls Send.
type SendOptions struct {
	// ContentType is stored with the message and served to the consumer;
	// empty leaves it to the server's default.
	ContentType string
	// Limit > 0 refuses the message (with *QueueFullError) when the tunnel
	// already holds Limit messages. Zero uses the server's setting.
	Limit int
	// NoBackpressure asks the server to accept the message even when the
	// tunnel is full, trimming the oldest.
	NoBackpressure bool
	// IdempotencyKey identifies the message (at most 256 bytes): sent again
	// with the same key within the server's window (24 h by default), it
	// is stored once and the server answers as the first time. Empty: Send
	// makes a key of its own, used by all its retries (unless the client
	// was made WithoutIdempotencyKeys).
	IdempotencyKey string
}

// SendResult is what the server said about a sent message.
type SendResult struct {
	ID string
	// QueueSize is the tunnel length after the send, when backpressure is
	// on; -1 otherwise.
	QueueSize int
	// Trimmed counts older messages dropped to make room (backpressure off).
	Trimmed int
	// Replayed is true when the server had the message already (its
	// idempotency key was known) and stored nothing.
	Replayed bool
}

// QueueFullError is returned by Send when backpressure refused the message.
type QueueFullError struct{ QueueSize int }

func (e *QueueFullError) Error() string {
	return fmt.Sprintf("postern: tunnel full (%d messages): consumers are not keeping up", e.QueueSize)
}

// Send produces a message. It is retried as the client's RetryPolicy says,
// with one idempotency key for every try.
func (t *Tunnel) Send(ctx context.Context, body []byte, opts SendOptions) (SendResult, error) {
	q := url.Values{}
	switch {
	case opts.NoBackpressure:
		q.Set("limit", "0")
	case opts.Limit > 0:
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if body == nil {
		body = []byte{}
	}
	key := opts.IdempotencyKey
	if key == "" && !t.c.noKeys {
		key = NewIdempotencyKey()
	}
	var h http.Header
	if key != "" {
		h = http.Header{"Idempotency-Key": {key}}
	}
	resp, data, err := t.c.doRetry(ctx, request{method: http.MethodPost, path: t.path(), query: q, body: body, contentType: opts.ContentType, header: h})
	if err != nil {
		return SendResult{}, err
	}
	switch resp.StatusCode {
	case http.StatusCreated:
		res := SendResult{ID: resp.Header.Get("X-Message-Id"), QueueSize: -1, Replayed: resp.Header.Get("Idempotent-Replayed") == "true"}
		if v := resp.Header.Get("X-Queue-Size"); v != "" {
			res.QueueSize, _ = strconv.Atoi(v)
		}
		res.Trimmed, _ = strconv.Atoi(resp.Header.Get("X-Queue-Trimmed"))
		return res, nil
	case http.StatusInsufficientStorage:
		if n, err := strconv.Atoi(resp.Header.Get("X-Queue-Size")); err == nil {
			return SendResult{}, &QueueFullError{QueueSize: n}
		}
	}
	return SendResult{}, unexpected(resp, data)
}

// ErrDraining is returned by a long-poll (Receive or ReadReply with a
// wait) that the server ended early because it is shutting down: unlike an
// empty answer, it does not mean that nothing came within the wait. Try
// again once the server (or another node) is back.
var ErrDraining = errors.New("postern: the server is shutting down")

// DrainingHeader marks the empty answer of a long-poll the server ended
// because it is shutting down.
const DrainingHeader = "X-Postern-Draining"

// ReceiveOptions controls Receive.
type ReceiveOptions struct {
	// Pending keeps the message until it is acknowledged with Ack or Reply;
	// until then every pending Receive returns it again.
	Pending bool
	// Wait > 0 long-polls up to Wait (whole seconds, rounded up; the server
	// clamps it to its maximum) for a message to arrive.
	Wait time.Duration
}

// Receive consumes the oldest message. ok is false when there was none
// (within Wait). It is retried as the client's RetryPolicy says: a message
// whose answer failed on the way is handed out again by the server.
func (t *Tunnel) Receive(ctx context.Context, opts ReceiveOptions) (m Message, ok bool, err error) {
	q := url.Values{}
	if opts.Pending {
		q.Set("pending", "")
	}
	path := t.path()
	if opts.Wait > 0 {
		path = t.path("poll")
		q.Set("timeout", seconds(opts.Wait))
	}
	resp, data, err := t.c.doRetry(ctx, request{method: http.MethodGet, path: path, query: q})
	if err != nil {
		return Message{}, false, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return Message{ID: resp.Header.Get("X-Message-Id"), ContentType: resp.Header.Get("Content-Type"), Body: data}, true, nil
	case http.StatusNoContent:
		if resp.Header.Get(DrainingHeader) != "" {
			return Message{}, false, ErrDraining
		}
		return Message{}, false, nil
	}
	return Message{}, false, unexpected(resp, data)
}

func seconds(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)
}

// Ack acknowledges (deletes) message id.
func (t *Tunnel) Ack(ctx context.Context, id string) error {
	resp, data, err := t.c.doRetry(ctx, request{method: http.MethodDelete, path: t.path(id)})
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusNoContent {
		return unexpected(resp, data)
	}
	return nil
}

// ErrNotPending is returned by Reply when the message is not pending
// (unknown, never received in pending mode, or already acknowledged).
var ErrNotPending = errors.New("postern: message is not pending")

// Reply acknowledges pending message id and leaves body for its producer.
func (t *Tunnel) Reply(ctx context.Context, id string, body []byte, contentType string) error {
	if body == nil {
		body = []byte{}
	}
	resp, data, err := t.c.do(ctx, request{method: http.MethodPost, path: t.path(id, "reply"), body: body, contentType: contentType})
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusCreated:
		return nil
	case http.StatusNoContent:
		return ErrNotPending
	}
	return unexpected(resp, data)
}

// ReadReply takes the reply to message id, waiting up to wait for it. A
// reply can be read once. ok is false when there was none.
func (t *Tunnel) ReadReply(ctx context.Context, id string, wait time.Duration) (m Message, ok bool, err error) {
	path, q := t.path(id, "reply"), url.Values(nil)
	if wait > 0 {
		path = t.path(id, "reply", "poll")
		q = url.Values{"timeout": {seconds(wait)}}
	}
	resp, data, err := t.c.do(ctx, request{method: http.MethodGet, path: path, query: q})
	if err != nil {
		return Message{}, false, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return Message{ContentType: resp.Header.Get("Content-Type"), Body: data}, true, nil
	case http.StatusNoContent:
		if resp.Header.Get(DrainingHeader) != "" {
			return Message{}, false, ErrDraining
		}
		return Message{}, false, nil
	}
	return Message{}, false, unexpected(resp, data)
}

// Status is where a message is.
type Status int

const (
	// StatusGone: never existed, or consumed and acknowledged.
	StatusGone Status = iota
	// StatusQueued: not yet received.
	StatusQueued
	// StatusPending: received in pending mode, not yet acknowledged.
	StatusPending
)

func (s Status) String() string {
	switch s {
	case StatusQueued:
		return "queued"
	case StatusPending:
		return "pending"
	}
	return "gone"
}

// Status reports where message id is.
func (t *Tunnel) Status(ctx context.Context, id string) (Status, error) {
	resp, data, err := t.c.doRetry(ctx, request{method: http.MethodGet, path: t.path(id)})
	if err != nil {
		return StatusGone, err
	}
	switch resp.StatusCode {
	case http.StatusCreated:
		return StatusQueued, nil
	case http.StatusAccepted:
		return StatusPending, nil
	case http.StatusNoContent:
		return StatusGone, nil
	}
	return StatusGone, unexpected(resp, data)
}

// Len reports the number of queued plus pending messages.
func (t *Tunnel) Len(ctx context.Context) (int, error) {
	resp, data, err := t.c.doRetry(ctx, request{method: http.MethodGet, path: t.path("len")})
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusNoContent {
		return 0, unexpected(resp, data)
	}
	return strconv.Atoi(resp.Header.Get("X-Queue-Size"))
}

// Clear deletes every message of the tunnel. Replies are kept.
func (t *Tunnel) Clear(ctx context.Context) error {
	resp, data, err := t.c.doRetry(ctx, request{method: http.MethodDelete, path: t.path("all")})
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusNoContent {
		return unexpected(resp, data)
	}
	return nil
}
