package client

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Inbox is the inbox of one actor on the server (the echoes wire format
// under /inbox): it sends addressed JSON messages as that actor and
// receives the messages and acks addressed to it.
//
//	ib := c.Inbox("olivia")
//	n, err := ib.Send(ctx, client.Envelope{IdempotencyKey: client.NewIdempotencyKey(),
//		Destination: []string{"maurice", "george"}, Body: json.RawMessage(`"are you ok?"`), ExpectsAck: true})
//	mail, remaining, err := c.Inbox("george").Receive(ctx)
type Inbox struct {
	c  *Client
	as string
}

// Inbox returns the inbox of actor as: requests carry "From: as". When the
// server has a token policy, the client's token must be granted write on
// /inbox/<as> to send and read to receive.
func (c *Client) Inbox(as string) *Inbox { return &Inbox{c: c, as: as} }

// Actor is the name the inbox acts as.
func (ib *Inbox) Actor() string { return ib.as }

// Envelope is one message to several destinations.
type Envelope struct {
	// IdempotencyKey identifies the message per (origin, destination):
	// 12 to 64 of A-Z a-z 0-9 - _ =. NewIdempotencyKey makes one; Send
	// makes one when it is empty.
	IdempotencyKey string `json:"idempotencyKey"`
	// Destination lists the actors that get a copy. Empty is allowed
	// (nothing is stored); nil is sent as [].
	Destination []string `json:"destination"`
	// Body is any JSON value; nil is sent as null.
	Body json.RawMessage `json:"body"`
	// ExpectsAck asks for an Ack from each destination when it receives
	// the message.
	ExpectsAck bool `json:"expectsAck"`
}

// InboxMessage is a message received.
type InboxMessage struct {
	IdempotencyKey string
	// Origin is the actor that sent it.
	Origin     string
	Body       json.RawMessage
	ExpectsAck bool
	// SentAt is when it was sent, to the second.
	SentAt time.Time
}

// Ack says that Destination received the message this inbox sent with
// IdempotencyKey.
type Ack struct {
	IdempotencyKey string
	Destination    string
	// ReceivedAt is when it was received, to the second.
	ReceivedAt time.Time
}

// Mail is one entry of a receive: exactly one of Message and Ack is set.
type Mail struct {
	Message *InboxMessage
	Ack     *Ack
}

// mailJSON is the wire form of both kinds of entries.
type mailJSON struct {
	Type           string          `json:"type"`
	IdempotencyKey string          `json:"idempotencyKey"`
	Origin         string          `json:"origin"`
	Destination    string          `json:"destination"`
	Body           json.RawMessage `json:"body"`
	ExpectsAck     bool            `json:"expectsAck"`
	SentAt         string          `json:"sentAt"`
	ReceivedAt     string          `json:"receivedAt"`
}

// MarshalJSON writes the entry in the server's wire form.
func (m Mail) MarshalJSON() ([]byte, error) {
	switch {
	case m.Message != nil:
		return json.Marshal(struct {
			Type           string          `json:"type"`
			IdempotencyKey string          `json:"idempotencyKey"`
			Origin         string          `json:"origin"`
			Body           json.RawMessage `json:"body"`
			ExpectsAck     bool            `json:"expectsAck"`
			SentAt         string          `json:"sentAt"`
		}{"msg", m.Message.IdempotencyKey, m.Message.Origin, nullIfEmpty(m.Message.Body), m.Message.ExpectsAck, m.Message.SentAt.UTC().Format(wireTime)})
	case m.Ack != nil:
		return json.Marshal(struct {
			Type           string `json:"type"`
			IdempotencyKey string `json:"idempotencyKey"`
			Destination    string `json:"destination"`
			ReceivedAt     string `json:"receivedAt"`
		}{"ack", m.Ack.IdempotencyKey, m.Ack.Destination, m.Ack.ReceivedAt.UTC().Format(wireTime)})
	}
	return nil, errors.New("postern: empty Mail")
}

// UnmarshalJSON reads an entry in the server's wire form.
func (m *Mail) UnmarshalJSON(data []byte) error {
	var w mailJSON
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	switch w.Type {
	case "msg":
		t, _ := time.Parse(time.RFC3339, w.SentAt)
		*m = Mail{Message: &InboxMessage{IdempotencyKey: w.IdempotencyKey, Origin: w.Origin, Body: nullIfEmpty(w.Body), ExpectsAck: w.ExpectsAck, SentAt: t}}
	case "ack":
		t, _ := time.Parse(time.RFC3339, w.ReceivedAt)
		*m = Mail{Ack: &Ack{IdempotencyKey: w.IdempotencyKey, Destination: w.Destination, ReceivedAt: t}}
	default:
		return fmt.Errorf("postern: inbox entry of unknown type %q", w.Type)
	}
	return nil
}

const wireTime = "2006-01-02T15:04:05Z"

func nullIfEmpty(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}

// NewIdempotencyKey returns a random url-safe key (32 random bytes in
// base64, 43 characters).
func NewIdempotencyKey() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (ib *Inbox) header() http.Header { return http.Header{"From": {ib.as}} }

func encodeEnvelope(env Envelope) ([]byte, error) {
	if env.Destination == nil {
		env.Destination = []string{}
	}
	env.Body = nullIfEmpty(env.Body)
	return json.Marshal(env)
}

// Send stores one copy of the envelope's message per destination and
// returns the number of destinations. Sending again with the same key is
// safe: an unread copy is replaced, a read one is not delivered again. An
// envelope without a key gets one (NewIdempotencyKey), and the send is
// retried with it as the client's RetryPolicy says.
func (ib *Inbox) Send(ctx context.Context, env Envelope) (int, error) {
	if env.IdempotencyKey == "" {
		env.IdempotencyKey = NewIdempotencyKey()
	}
	body, err := encodeEnvelope(env)
	if err != nil {
		return 0, err
	}
	resp, data, err := ib.c.doRetry(ctx, request{method: http.MethodPost, path: "/inbox/send", body: body, contentType: "application/json", header: ib.header()})
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, inboxError(resp, data)
	}
	var out struct {
		Sent int `json:"sent"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return 0, fmt.Errorf("postern: bad send answer: %w", err)
	}
	return out.Sent, nil
}

// Receive takes the messages and acks waiting for the actor, oldest first;
// they are removed from the server. The server returns at most its
// per-receive cap; remaining is how many were still waiting then (0 when
// the answer held everything): receive again to get them.
func (ib *Inbox) Receive(ctx context.Context) (mail []Mail, remaining int, err error) {
	return ib.receive(ctx, "/inbox/receive", nil)
}

// Exchange sends the envelope and then receives, in one request; an
// envelope without a key gets one, as for Send.
func (ib *Inbox) Exchange(ctx context.Context, env Envelope) (mail []Mail, remaining int, err error) {
	if env.IdempotencyKey == "" {
		env.IdempotencyKey = NewIdempotencyKey()
	}
	body, err := encodeEnvelope(env)
	if err != nil {
		return nil, 0, err
	}
	return ib.receive(ctx, "/inbox/exchange", body)
}

func (ib *Inbox) receive(ctx context.Context, path string, body []byte) ([]Mail, int, error) {
	if body == nil {
		body = []byte{}
	}
	resp, data, err := ib.c.doRetry(ctx, request{method: http.MethodPost, path: path, body: body, contentType: "application/json", header: ib.header()})
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, 0, inboxError(resp, data)
	}
	mail := []Mail{}
	if err := json.Unmarshal(data, &mail); err != nil {
		return nil, 0, fmt.Errorf("postern: bad receive answer: %w", err)
	}
	remaining, _ := strconv.Atoi(resp.Header.Get("X-Inbox-Remaining"))
	return mail, remaining, nil
}

// inboxError reads the inbox's JSON error shape into an *Error.
func inboxError(resp *http.Response, data []byte) error {
	var e struct {
		Error   string   `json:"error"`
		Details []string `json:"details"`
	}
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		return unexpected(resp, data)
	}
	msg := e.Error
	for i, d := range e.Details {
		if i == 0 {
			msg += ": " + d
		} else {
			msg += "; " + d
		}
	}
	if len(msg) > 500 {
		msg = msg[:500]
	}
	return &Error{StatusCode: resp.StatusCode, Message: msg, Details: e.Details, Header: resp.Header}
}
