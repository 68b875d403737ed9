package client

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Defaults of InspectorOptions.
const (
	// DefaultInspectRequests is how many exchanges an Inspector keeps.
	DefaultInspectRequests = 100
	// DefaultInspectBodyBytes is how much of each body it keeps; with
	// DefaultInspectRequests at most about 13 MiB in all.
	DefaultInspectBodyBytes = 64 << 10
	// DefaultReplayTimeout bounds a replayed exchange.
	DefaultReplayTimeout = 30 * time.Second
)

// InspectorOptions configures an Inspector.
type InspectorOptions struct {
	// Requests is how many exchanges are kept (the oldest go first);
	// zero: DefaultInspectRequests.
	Requests int
	// BodyBytes is how much of each request and response body is kept;
	// zero: DefaultInspectBodyBytes.
	BodyBytes int
	// ReplayTimeout bounds a replay; zero: DefaultReplayTimeout.
	ReplayTimeout time.Duration
}

// Inspector records the exchanges an agent (ExposeOptions.Inspector)
// forwards to its local service in a bounded ring, and serves them as
// an http.Handler for people and tools, on a local address:
//
//	GET  /                           the page (embedded, no external assets)
//	GET  /api/requests               the exchanges, newest first (JSON)
//	POST /api/requests/{id}/replay   sends exchange id's request to the local service again, records and returns the new exchange
//
// The handler answers only requests whose Host is an address (or
// localhost), so that a web site cannot read it through DNS rebinding,
// and replays only requests with a JSON content type and no foreign
// Origin, which no cross-site form or simple request can send.
type Inspector struct {
	o  InspectorOptions
	hc *http.Client
	mu sync.Mutex
	// ring holds the exchanges, oldest first once full: next is where
	// the next one goes.
	ring []*Exchange
	next int
	seq  uint64
}

// Exchange is one request and its answer as the agent forwarded them.
type Exchange struct {
	ID         string        `json:"id"`
	Time       time.Time     `json:"time"`
	DurationMS float64       `json:"duration_ms"`
	Method     string        `json:"method"`
	Path       string        `json:"path"`
	Host       string        `json:"host"`
	Status     int           `json:"status"`
	ReplayOf   string        `json:"replay_of,omitempty"`
	Error      string        `json:"error,omitempty"`
	Request    InspectedPart `json:"request"`
	Response   InspectedPart `json:"response"`

	sent *http.Request // what went to the local service, for replays
}

// InspectedPart is the headers and the body (up to the cap) of a request
// or response. Body is text when it is valid UTF-8, else base64
// (BodyEncoding says which).
type InspectedPart struct {
	Headers       http.Header `json:"headers"`
	Body          string      `json:"body"`
	BodyEncoding  string      `json:"body_encoding"`
	BodySize      int64       `json:"body_size"`
	BodyTruncated bool        `json:"body_truncated"`
	body          []byte
}

// NewInspector returns an empty Inspector.
func NewInspector(o InspectorOptions) *Inspector {
	if o.Requests <= 0 {
		o.Requests = DefaultInspectRequests
	}
	if o.BodyBytes <= 0 {
		o.BodyBytes = DefaultInspectBodyBytes
	}
	if o.ReplayTimeout <= 0 {
		o.ReplayTimeout = DefaultReplayTimeout
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: pairDialTimeout}).DialContext,
		MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second, DisableCompression: true,
	}
	return &Inspector{
		o: o, ring: make([]*Exchange, 0, o.Requests),
		hc: &http.Client{Transport: tr, Timeout: o.ReplayTimeout, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
	}
}

// Close closes the replays' idle connections.
func (in *Inspector) Close() { in.hc.CloseIdleConnections() }

// Exchanges returns the exchanges kept, newest first.
func (in *Inspector) Exchanges() []*Exchange {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]*Exchange, 0, len(in.ring))
	for i := range len(in.ring) {
		out = append(out, in.ring[(in.next-1-i+2*len(in.ring))%len(in.ring)])
	}
	return out
}

// add keeps e under a new id, forgetting the oldest when full.
func (in *Inspector) add(e *Exchange) {
	e.Request.finish()
	e.Response.finish()
	in.mu.Lock()
	defer in.mu.Unlock()
	in.seq++
	e.ID = strconv.FormatUint(in.seq, 10)
	if len(in.ring) < in.o.Requests {
		in.ring = append(in.ring, e)
		in.next = len(in.ring) % in.o.Requests
		return
	}
	in.ring[in.next] = e
	in.next = (in.next + 1) % in.o.Requests
}

func (in *Inspector) find(id string) *Exchange {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, e := range in.ring {
		if e.ID == id {
			return e
		}
	}
	return nil
}

// finish fills Body from the bytes kept.
func (p *InspectedPart) finish() {
	if utf8.Valid(p.body) {
		p.Body, p.BodyEncoding = string(p.body), "utf-8"
	} else {
		p.Body, p.BodyEncoding = base64.StdEncoding.EncodeToString(p.body), "base64"
	}
	if p.Headers == nil {
		p.Headers = http.Header{}
	}
}

// capture keeps the first max bytes written to it and counts them all.
type capture struct {
	mu   sync.Mutex
	max  int
	buf  []byte
	size int64
}

func (c *capture) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.size += int64(len(b))
	if room := c.max - len(c.buf); room > 0 {
		c.buf = append(c.buf, b[:min(room, len(b))]...)
	}
	return len(b), nil
}

// into sets p's body from c.
func (c *capture) into(p *InspectedPart) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// A copy: a request body may still be arriving (the local service
	// answered before reading it all).
	p.body, p.BodySize, p.BodyTruncated = append([]byte(nil), c.buf...), c.size, c.size > int64(len(c.buf))
}

// teeBody copies what is read from a request body into a capture.
type teeBody struct {
	io.ReadCloser
	c *capture
}

func (t teeBody) Read(b []byte) (int, error) {
	n, err := t.ReadCloser.Read(b)
	t.c.Write(b[:n])
	return n, err
}

// recording is the exchange a pair is recording, nil when it records
// none.
type recording struct {
	in        *Inspector
	e         *Exchange
	start     time.Time
	req, resp *capture
}

// record starts recording the exchange of req, sent as out (whose body it
// taps); nil without an inspector.
func (in *Inspector) record(req, out *http.Request) *recording {
	if in == nil {
		return nil
	}
	r := &recording{in: in, start: time.Now(), req: &capture{max: in.o.BodyBytes}}
	sent := out.Clone(context.Background()) // headers copied: kept as they were sent
	sent.Body = nil
	r.e = &Exchange{
		Time: r.start, Method: req.Method, Path: req.URL.RequestURI(), Host: req.Host,
		Request: InspectedPart{Headers: sent.Header}, sent: sent,
	}
	if out.Body != nil && out.Body != http.NoBody {
		out.Body = teeBody{out.Body, r.req}
	}
	return r
}

// answered records the answer's status and headers and returns the
// capture for its body.
func (r *recording) answered(status int, h http.Header) *capture {
	if r == nil {
		return nil
	}
	r.e.Status = status
	r.e.Response.Headers = h.Clone()
	r.resp = &capture{max: r.in.o.BodyBytes}
	return r.resp
}

// failed records an exchange that got no answer from the local service.
func (r *recording) failed(status int, msg string) {
	if r == nil {
		return
	}
	r.e.Status, r.e.Error = status, msg
}

// done keeps the exchange.
func (r *recording) done() {
	if r == nil {
		return
	}
	r.e.DurationMS = float64(time.Since(r.start).Microseconds()) / 1000
	r.req.into(&r.e.Request)
	if cl := r.e.sent.ContentLength; cl > r.e.Request.BodySize {
		// The answer came before the whole body: not all of it is kept.
		r.e.Request.BodyTruncated = true
	}
	r.resp.into(&r.e.Response)
	r.in.add(r.e)
}

// ServeHTTP serves the page and the API.
func (in *Inspector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !inspectorHost(r.Host) {
		inspectError(w, http.StatusMisdirectedRequest, "this inspector answers only to an address or localhost in Host")
		return
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
	switch {
	case r.URL.Path == "/":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			inspectError(w, http.StatusMethodNotAllowed, "method not allowed")
			return
		}
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'")
		h.Set("Content-Type", "text/html; charset=utf-8")
		w.Write(inspectorPage)
	case r.URL.Path == "/inspector.js" || r.URL.Path == "/inspector.css":
		serveAsset(w, r)
	case r.URL.Path == "/api/requests":
		if r.Method != http.MethodGet {
			inspectError(w, http.StatusMethodNotAllowed, "method not allowed")
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"requests": in.Exchanges()})
	case strings.HasPrefix(r.URL.Path, "/api/requests/") && strings.HasSuffix(r.URL.Path, "/replay"):
		in.serveReplay(w, r, strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api/requests/"), "/replay"))
	default:
		inspectError(w, http.StatusNotFound, "not found")
	}
}

// serveReplay sends exchange id's request to the local service again.
func (in *Inspector) serveReplay(w http.ResponseWriter, r *http.Request, id string) {
	if r.Method != http.MethodPost {
		inspectError(w, http.StatusMethodNotAllowed, "method not allowed: POST to replay")
		return
	}
	if err := sameSite(r); err != nil {
		inspectError(w, http.StatusForbidden, err.Error())
		return
	}
	e := in.find(id)
	switch {
	case e == nil:
		inspectError(w, http.StatusNotFound, fmt.Sprintf("no request %q is kept (it may have been forgotten: the inspector keeps the last %d)", id, in.o.Requests))
		return
	case e.Request.BodyTruncated:
		inspectError(w, http.StatusConflict, fmt.Sprintf("request %s had a body larger than the %d bytes kept: it cannot be replayed", id, in.o.BodyBytes))
		return
	case e.sent == nil || e.Status == http.StatusSwitchingProtocols:
		inspectError(w, http.StatusConflict, fmt.Sprintf("request %s was a protocol upgrade: it cannot be replayed", id))
		return
	}
	writeJSON(w, http.StatusOK, in.replay(r.Context(), e))
}

// replay sends e's request to the local service and records the exchange.
func (in *Inspector) replay(ctx context.Context, e *Exchange) *Exchange {
	out := e.sent.Clone(ctx)
	out.Body = io.NopCloser(bytes.NewReader(e.Request.body))
	out.ContentLength = int64(len(e.Request.body))
	out.Close = false
	rec := in.record(&http.Request{Method: e.Method, URL: &url.URL{Path: "/"}, Host: e.Host}, out)
	rec.e.Path, rec.e.ReplayOf = e.Path, e.ID
	resp, err := in.hc.Do(out)
	if err != nil {
		rec.failed(http.StatusBadGateway, "the local service cannot be reached: "+oneLineErr(err))
		rec.done()
		return rec.e
	}
	c := rec.answered(resp.StatusCode, resp.Header)
	_, err = io.Copy(c, resp.Body)
	resp.Body.Close()
	if err != nil {
		rec.e.Error = "the answer was cut: " + oneLineErr(err)
	}
	rec.done()
	return rec.e
}

// sameSite refuses what a web page of another site could send: a request
// without a JSON content type (forms and simple requests cannot set one),
// or with an Origin that is not this inspector's.
func sameSite(r *http.Request) error {
	ct := strings.TrimSpace(strings.Split(r.Header.Get("Content-Type"), ";")[0])
	if !strings.EqualFold(ct, "application/json") {
		return errors.New("replays need Content-Type: application/json")
	}
	for _, o := range r.Header.Values("Origin") {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host || (u.Scheme != "http" && u.Scheme != "https") {
			return fmt.Errorf("origin %q may not replay requests here", o)
		}
	}
	return nil
}

// inspectorHost reports whether host names the inspector by address or
// as localhost: never a DNS name another site could point here.
func inspectorHost(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	return net.ParseIP(strings.Trim(h, "[]")) != nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// inspectError writes a one-line error.
func inspectError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	io.WriteString(w, msg)
}

// The page and its assets.
var (
	//go:embed inspector/index.html
	inspectorPage []byte
	//go:embed inspector/inspector.js
	inspectorJS []byte
	//go:embed inspector/inspector.css
	inspectorCSS []byte
)

func serveAsset(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		inspectError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if strings.HasSuffix(r.URL.Path, ".js") {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Write(inspectorJS)
		return
	}
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Write(inspectorCSS)
}
