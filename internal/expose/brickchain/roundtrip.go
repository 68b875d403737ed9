package brickchain

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/postern/postern/internal/httpapi"
)

// backend is one client id held by an agent connection: the hub's
// RoundTripper for it, which carries plain HTTP requests as http-request
// frames and waits for the http-response with the same id.
type backend struct{ c *conn }

// RoundTrip relays req to the agent. Websockets do not come here (see
// ServeWebsocket): a websocket forwarded from another node is refused.
func (b *backend) RoundTrip(req *http.Request) (*http.Response, error) {
	c := b.c
	if httpapi.IsWebsocketUpgrade(req.Header) {
		return nil, httpapi.Errorf(http.StatusBadGateway, "websockets to this agent are served by the node it is connected to")
	}
	body, err := c.t.readBody(req)
	if err != nil {
		return nil, err
	}
	id := NewID()
	frame := HTTPRequest{
		Base:    NewBase(TypeHTTPRequest, id),
		URL:     req.URL.Path,
		Query:   req.URL.RawQuery,
		Headers: FirstValues(req.Header),
		Method:  req.Method,
		Body:    base64.StdEncoding.EncodeToString(body),
	}
	res, err := c.exchange(req.Context(), id, frame)
	switch {
	case err == errTimeout:
		c.t.count.Request("timeout")
		return nil, &httpapi.Error{Status: http.StatusGatewayTimeout, Message: "timeout"}
	case err != nil:
		return nil, err
	case res.err != nil:
		c.t.count.Request("agent_error")
		return nil, res.err
	}
	return c.t.response(req, res.f)
}

// readBody reads a user's request body whole, at most MaxRequestBytes.
func (t *Transport) readBody(req *http.Request) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	max := t.opts.MaxRequestBytes
	body, err := io.ReadAll(io.LimitReader(req.Body, max+1))
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > max {
		t.count.Request("too_large")
		return nil, httpapi.ErrRequestTooLarge
	}
	return body, nil
}

// errTimeout: the agent did not answer within ResponseTimeout.
var errTimeout = errors.New("the agent did not answer in time")

// exchange sends frame, whose id is id, and waits for its answer, at most
// ResponseTimeout (then errTimeout) or until ctx ends (then its error).
func (c *conn) exchange(ctx context.Context, id string, frame any) (result, error) {
	ch := make(chan result, 1)
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		return result{}, errAgentGone
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	wait, cancel := context.WithTimeout(ctx, c.t.opts.ResponseTimeout)
	defer cancel()
	timeout := func() (result, error) {
		if ctx.Err() != nil {
			return result{}, ctx.Err()
		}
		return result{}, errTimeout
	}
	if err := c.send(wait, frame); err != nil {
		if wait.Err() != nil {
			return timeout()
		}
		return result{}, err
	}
	select {
	case res := <-ch:
		return res, nil
	case <-wait.Done():
		return timeout()
	}
}

// response turns an http-response frame into the user's response.
func (t *Transport) response(req *http.Request, f Frame) (*http.Response, error) {
	if f.Status < 200 || f.Status > 999 {
		t.count.Request("agent_error")
		return nil, httpapi.Errorf(http.StatusBadGateway, "the agent answered with an invalid status %d", f.Status)
	}
	body, err := base64.StdEncoding.DecodeString(f.Body)
	if err != nil {
		t.count.Request("agent_error")
		return nil, httpapi.Errorf(http.StatusBadGateway, "the agent's response body is not base64")
	}
	h := make(http.Header, len(f.Headers)+1)
	for k, v := range f.Headers {
		if validHeader(k, v) {
			h.Set(k, v)
		}
	}
	// The length is what the body is, whatever the agent said.
	h.Del("Content-Length")
	h.Del("Transfer-Encoding")
	if h.Get("Content-Type") == "" && f.ContentType != "" && validHeader("Content-Type", f.ContentType) {
		h.Set("Content-Type", f.ContentType)
	}
	t.count.Request("ok")
	return &http.Response{
		Status:        strconv.Itoa(f.Status) + " " + http.StatusText(f.Status),
		StatusCode:    f.Status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}, nil
}

// validHeader reports whether an agent's header may be passed on: a token
// name and a value without control characters (no response splitting).
func validHeader(k, v string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
