// Package client is the Go client of a postern server. Every call takes a
// context, which bounds it: long-polls end when the context does.
//
// Calls that are safe to repeat are retried on 503, 429 and connection
// failures, with capped, jittered backoff (RetryPolicy; WithoutRetry turns
// it off), and every produce carries an Idempotency-Key of its own, so a
// produce retried after a lost answer is stored once.
//
//	c, err := client.New("http://127.0.0.1:8080", client.WithToken(tok))
//	res, err := c.Tunnel("orders").Send(ctx, []byte(`{"id":1}`), client.SendOptions{ContentType: "application/json"})
//	m, ok, err := c.Tunnel("orders").Receive(ctx, client.ReceiveOptions{Pending: true, Wait: 30 * time.Second})
//	n, err := c.Inbox("olivia").Send(ctx, client.Envelope{IdempotencyKey: client.NewIdempotencyKey(), Destination: []string{"george"}, Body: json.RawMessage(`"hi"`)})
//	mail, remaining, err := c.Inbox("george").Receive(ctx)
//
// Channels are pub/sub: every subscriber gets every message.
//
//	err := c.Channel("/news").Publish(ctx, []byte("hello"))
//	sub, err := c.Channel("/news").Subscribe(ctx, client.SubscribeOptions{})
//	for m := range sub.Messages() { fmt.Println(m.ID, string(m.Data)) }
package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// DefaultMaxResponseBytes bounds how much of a response body the client
// reads.
const DefaultMaxResponseBytes = 64 << 20

// Client talks to one postern server. It is safe for concurrent use.
type Client struct {
	base    *url.URL
	hc      *http.Client
	token   string
	maxBody int64
	// channelsPrefix is where the server mounts channels.
	channelsPrefix string
	retry          RetryPolicy
	noKeys         bool // Send makes no Idempotency-Key of its own
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send requests with hc. Leave its Timeout
// at zero: long-polls are bounded by their context instead.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithToken sends "Authorization: Bearer token" with every request.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// New returns a client of the server at baseURL ("http://host:port", with
// an optional path prefix when postern is mounted below one).
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("server URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http://host[:port] or https://host[:port]", baseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c := &Client{base: u, hc: http.DefaultClient, maxBody: DefaultMaxResponseBytes, channelsPrefix: DefaultChannelsPrefix, retry: DefaultRetry}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Error is an answer the client did not expect: the status and the
// server's one-line message.
type Error struct {
	StatusCode int
	Message    string
	// Details lists the problems the server named, for front doors whose
	// errors carry a list (the inbox).
	Details []string
	// Header is the answer's header. Postern's own error answers carry
	// ErrorHeader; an answer without it came from something else (a proxy,
	// another server).
	Header http.Header
}

// ErrorHeader is the header of postern's error answers: a one-line
// explanation, more specific than the body where the wire format fixes
// the body (a tunnel id that breaks the naming rule gets "Malformed url"
// and the rule here).
const ErrorHeader = "X-Postern-Error"

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("postern: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return fmt.Sprintf("postern: %d %s", e.StatusCode, e.Message)
}

// request is one call to the server.
type request struct {
	method      string
	path        string // already escaped
	query       url.Values
	body        []byte
	contentType string
	header      http.Header
}

// do sends rq and returns the response with its body read (bounded).
func (c *Client) do(ctx context.Context, rq request) (*http.Response, []byte, error) {
	u := *c.base
	u.RawPath = u.Path + rq.path
	u.Path, _ = url.PathUnescape(u.RawPath)
	if rq.query != nil {
		u.RawQuery = rq.query.Encode()
	}
	var body io.Reader
	if rq.body != nil {
		body = bytes.NewReader(rq.body)
	}
	req, err := http.NewRequestWithContext(ctx, rq.method, u.String(), body)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range rq.header {
		req.Header[k] = v
	}
	if rq.contentType != "" {
		req.Header.Set("Content-Type", rq.contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		return nil, nil, err
	}
	if int64(len(data)) > c.maxBody {
		return nil, nil, fmt.Errorf("postern: response larger than %d bytes", c.maxBody)
	}
	return resp, data, nil
}

// unexpected turns an answer the caller has no use for into an *Error.
func unexpected(resp *http.Response, body []byte) error {
	msg := strings.TrimSpace(string(body))
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return &Error{StatusCode: resp.StatusCode, Message: msg, Header: resp.Header}
}
