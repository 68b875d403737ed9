package gcr

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/gcr/wire"
)

// Routes of the protocol.
const (
	ClientPrefix      = "/client/"
	RequestPath       = "/server/request"
	ResponsePath      = "/server/response"
	RequestStreamPath = "/server/requeststream"
	// ServerNameHeader selects the backend on paths no other capability
	// owns, the path kept as it is.
	ServerNameHeader = "X-Server-Name"
	// RelayIDHeader carries a request id on the unknown-client answer (the
	// original meant to send it and never did).
	RelayIDHeader = "X-Cloudrobotics-Http-Relay"
	// StreamContentType is the type of /server/requeststream answers.
	StreamContentType = "application/octet-data"
)

// Wire-exact answers of the original.
var (
	errMissingServer = &httpapi.Error{Status: http.StatusBadRequest, Message: "Missing server query parameter"}
	errMissingID     = &httpapi.Error{Status: http.StatusBadRequest, Message: "Missing id query parameter"}
	errNoRequest     = &httpapi.Error{Status: http.StatusRequestTimeout, Message: "No request received within timeout"}
	errRestarting    = &httpapi.Error{Status: http.StatusRequestTimeout, Message: "Server is restarting"}
	errNoHeader      = &httpapi.Error{Status: http.StatusInternalServerError, Message: "Received no header from relay client"}
	errBadName       = &httpapi.Error{Status: http.StatusBadRequest, Message: "Invalid server name"}
	errTooLarge      = &httpapi.Error{Status: http.StatusBadRequest, Message: "HttpResponse too large"}
	errLost          = &httpapi.Error{Status: http.StatusBadGateway, Message: "the relay client did not receive the request"}
)

// unreachable is how the original starts both answers for a backend that
// cannot be reached.
const unreachable = "cannot reach the client %q; check that it's turned on, set up, and connected to the internet"

func unknownClient(name string) *httpapi.Error {
	return (&httpapi.Error{Status: http.StatusServiceUnavailable,
		Message: fmt.Sprintf(unreachable+" (unknown client)", name),
	}).WithHeader(RelayIDHeader, newID(name))
}

func notPickedUp(name string) *httpapi.Error {
	return httpapi.Errorf(http.StatusInternalServerError,
		unreachable+" (timeout waiting for relay client to accept request); if the network config recently changed, try again in 1-2 minutes", name)
}

// shortPath is the answer to /client/ without a backend name.
func shortPath(path string) *httpapi.Error {
	return httpapi.Errorf(http.StatusBadRequest, "request path too short: %q missing remote server identifier after %q", path, ClientPrefix)
}

func invalidID(id string) *httpapi.Error {
	return httpapi.Errorf(http.StatusBadRequest, "Duplicate or invalid request ID %s", id)
}

func gone(id string) *httpapi.Error {
	return httpapi.Errorf(http.StatusGone, "No ongoing request with id %s", id)
}

func forbidden(action auth.Action, name string) *httpapi.Error {
	return httpapi.Errorf(http.StatusForbidden, "Forbidden: a token granted %s on /relay/%s is required", action, name)
}

// writeError writes e as the original did: http.Error's text with its
// newline, except for the answers it wrote raw (503, 504 and the missing
// header).
func writeError(w http.ResponseWriter, r *http.Request, e *httpapi.Error) {
	if e.Status == http.StatusServiceUnavailable || e.Status == http.StatusGatewayTimeout || e == errNoHeader {
		httpapi.WritePlain(w, r, e)
		return
	}
	cp := *e
	cp.Message += "\n"
	httpapi.WritePlain(w, r, &cp)
}

// Internal reasons a relayed request ended.
var (
	errReaped   = errors.New("relay request inactive")
	errUserGone = errors.New("the user went away")
	errClosed   = errors.New("relay request closed")
	errNotTaken = errors.New("relay request not picked up")
)

// Relay is the relay front door.
type Relay struct {
	hub    *relay.Hub
	opts   Options
	policy *auth.Policy
	log    *slog.Logger

	mu       sync.Mutex
	backends map[string]*backend
	pending  map[string]*pending
	closing  bool
	quit     chan struct{}
	// changed is closed and dropped when poll counts change; WaitForPolls
	// makes it, so that polls make no channel while nobody waits.
	changed chan struct{}
	// reserved counts the bytes set aside for response messages still
	// arriving (see readMessage).
	reserved atomic.Int64

	hClient, hName, hPoll, hResponse, hStream http.Handler
}

// New returns the relay front door on hub, whose namespace should be
// "relay", and which it owns from then on: Shutdown shuts it down. Under
// deps.Policy a relay client needs a token granted serve on
// /relay/<name>, a user one granted call on /relay/<name> (403
// otherwise); without one the relay is open, as the original was.
func New(hub *relay.Hub, opts Options, deps capability.Deps) (*Relay, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	g := &Relay{
		hub:      hub,
		opts:     opts,
		policy:   deps.Policy,
		log:      deps.Log(),
		backends: make(map[string]*backend),
		pending:  make(map[string]*pending),
		quit:     make(chan struct{}),
	}
	g.hClient = httpapi.Handle(g.serveClient, writeError)
	g.hName = httpapi.Handle(g.serveServerName, writeError)
	g.hPoll = httpapi.Handle(g.servePoll, writeError)
	g.hResponse = httpapi.Handle(g.serveResponse, writeError)
	g.hStream = httpapi.Handle(g.serveRequestStream, writeError)
	return g, nil
}

// Mount adds the relay routes to the node's table, and a claim: a request
// on a path no other capability owns that names a backend with
// X-Server-Name is relayed to it, its path kept as it is.
func (g *Relay) Mount(rt *httpapi.Routes) {
	rt.Handle(ClientPrefix, g.hClient)
	rt.Handle(RequestPath, g.hPoll)
	rt.Handle(ResponsePath, g.hResponse)
	rt.Handle(RequestStreamPath, g.hStream)
	rt.Add(httpapi.Route{Name: "relay by " + ServerNameHeader, When: namesServer, Handler: g.hName})
}

// namesServer reports whether r names a relay backend with X-Server-Name.
func namesServer(r *http.Request) bool { return len(r.Header.Values(ServerNameHeader)) > 0 }

// ValidName reports whether s can name a backend: 1 to 256 bytes without
// control characters.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// newID returns a request id: <name>: and 32 lowercase hex digits (128
// bits) from crypto/rand. Without a token file the id is what lets a
// relay client post a request's response and read its upgraded bytes, so
// it must not be guessable.
func newID(name string) string {
	var b [16]byte
	rand.Read(b[:])
	return name + ":" + hex.EncodeToString(b[:])
}

// nameOfID returns the backend name of a request id.
func nameOfID(id string) (string, bool) {
	i := strings.LastIndexByte(id, ':')
	if i < 1 || len(id)-i-1 != 32 {
		return "", false
	}
	for _, c := range id[i+1:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", false
		}
	}
	return id[:i], true
}

func (g *Relay) allow(r *http.Request, a auth.Action, name string) bool {
	return !g.policy.Enabled() || g.policy.Allow(r, a, "/relay/"+name)
}

// stripToken removes from a request about to reach a backend on this node
// the postern tokens the user presented (auth.Policy.Strip), so the backend
// never sees postern's secrets; credentials of its own pass.
func (g *Relay) stripToken(out *http.Request) {
	out.URL.RawQuery = g.policy.Strip(out.Header, out.URL.RawQuery)
}

// serveClient is ANY /client/<name>/<path>.
func (g *Relay) serveClient(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(w, "relay.client")
	rest := strings.TrimPrefix(r.URL.Path, ClientPrefix)
	name, path, _ := strings.Cut(rest, "/")
	if name == "" {
		return shortPath(r.URL.Path)
	}
	path = "/" + path
	rawPath := ""
	if r.URL.RawPath != "" {
		// Keep the user's encoding ("%2F") when the name reads the same
		// encoded and decoded.
		esc := strings.TrimPrefix(r.URL.EscapedPath(), ClientPrefix)
		escName, escRest, _ := strings.Cut(esc, "/")
		if n, err := url.PathUnescape(escName); err == nil && n == name {
			rawPath = "/" + escRest
		}
	}
	return g.relayUser(w, r, name, path, rawPath)
}

// serveServerName relays a request named by X-Server-Name, path unchanged.
func (g *Relay) serveServerName(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(w, "relay.server_name")
	return g.relayUser(w, r, r.Header.Get(ServerNameHeader), r.URL.Path, r.URL.RawPath)
}

func (g *Relay) relayUser(w http.ResponseWriter, r *http.Request, name, path, rawPath string) error {
	if !ValidName(name) {
		return errBadName
	}
	if !g.allow(r, auth.Call, name) {
		return forbidden(auth.Call, name)
	}
	g.hub.Serve(w, r, relay.Target{
		Name:                name,
		Path:                path,
		RawPath:             rawPath,
		RawQuery:            r.URL.RawQuery,
		MaxRequestBodyBytes: g.opts.MaxRequestBodyBytes,
		NoBackend:           unknownClient,
		ErrorWriter:         writeError,
		NoXForwarded:        !g.opts.ForwardedHeaders,
		Local:               g.stripToken,
	})
	return nil
}

// servePoll is GET /server/request?server=<name>: the long-poll of a relay
// client for the next request.
func (g *Relay) servePoll(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(w, "relay.poll")
	name := r.URL.Query().Get("server")
	if name == "" {
		return errMissingServer
	}
	if !ValidName(name) {
		return errBadName
	}
	if !g.allow(r, auth.Serve, name) {
		return forbidden(auth.Serve, name)
	}
	b, first, ok := g.pollStart(name)
	if !ok {
		return errRestarting
	}
	if first {
		g.log.Info("Relay client connected", "ServerName", name)
	} else if g.log.Enabled(r.Context(), slog.LevelDebug) {
		g.log.Debug("Relay client connected", "ServerName", name)
	}
	defer g.pollEnd(b)
	batch := g.batchSize(r)
	n := max(batch, 1)
	// Under load a request is often waiting already: take it without
	// arming a timer (unless polls are parked: they come first).
	if ps := b.take(n, maxBatchBytes, false); ps != nil {
		return g.deliverAll(w, ps, batch)
	}
	// Parked now (take counted it): uncounted when it leaves without a
	// request.
	unpark := func() {
		g.mu.Lock()
		b.parked--
		g.mu.Unlock()
	}
	t := getTimer(g.opts.PollTimeout)
	defer putTimer(t)
	for {
		select {
		case <-b.queued:
			if ps := b.take(n, maxBatchBytes, true); ps != nil {
				return g.deliverAll(w, ps, batch)
			}
		case <-t.C:
			unpark()
			return errNoRequest
		case <-g.quit:
			unpark()
			return errRestarting
		case <-r.Context().Done():
			unpark()
			return nil
		}
	}
}

// deliver answers a poll with the request p.
func (g *Relay) deliver(w http.ResponseWriter, p *pending) error {
	h := w.Header()
	h["Content-Type"] = requestContentType
	h["Content-Length"] = []string{strconv.Itoa(len(p.msg))}
	if !g.hub.Shared() {
		h[wire.StreamHeader] = streamsYes // see stream.go
	}
	if _, err := w.Write(p.msg); err != nil {
		p.finish(errLost)
		return nil
	}
	p.touch()
	return nil
}

// Header values set on every answer, shared (net/http only reads them).
var (
	requestContentType = []string{wire.RequestContentType}
	batchContentType   = []string{wire.BatchContentType}
	textPlain          = []string{"text/plain"}
	okBody             = []byte("ok")
	streamsYes         = []string{"1"}
)

// serveResponse is POST /server/response: one chunk of a response. A
// large one whose id comes before its body (AppendStreamHead's layout)
// is relayed to the user as it arrives (serveStream); any other is read
// whole first.
func (g *Relay) serveResponse(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(w, "relay.response")
	rc := http.NewResponseController(w)
	deadline := rc.SetReadDeadline(time.Now().Add(g.opts.InactiveRequestTimeout)) == nil
	if r.Header.Get("Content-Type") == wire.BatchContentType && !g.hub.Shared() {
		return g.serveBatch(w, r, rc, deadline)
	}
	var start []byte
	if r.ContentLength < 0 || r.ContentLength > streamMinBytes {
		var err error
		start, err = readStart(r.Body, g.opts.MaxResponseMessageBytes)
		defer putMessage(start)
		if err != nil {
			return bodyError(w, err)
		}
		if handled, err := g.serveStream(w, r, rc, start); handled {
			return err
		}
	}
	body, err := g.readMessage(w, r, start)
	if err != nil {
		return err
	}
	if deadline {
		rc.SetReadDeadline(time.Time{})
	}
	handed := false
	defer func() {
		if !handed {
			putMessage(body)
		}
	}()
	msg, err := wire.UnmarshalResponse(body)
	if err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "Invalid HttpResponse: %v", err)
	}
	if !msg.HasID {
		return httpapi.Errorf(http.StatusBadRequest, "HttpResponse without id")
	}
	name, ok := nameOfID(msg.ID)
	if !ok {
		return invalidID(msg.ID)
	}
	if !g.allow(r, auth.Serve, name) {
		return forbidden(auth.Serve, name)
	}
	p := g.lookup(msg.ID)
	if p == nil {
		if g.hub.ForwardToNodes(w, r, name, body, func(st int) bool { return st != http.StatusBadRequest }) {
			return nil
		}
		return invalidID(msg.ID)
	}
	p.touchChunk(msg)
	select {
	case p.chunks <- chunk{msg: msg, buf: body}:
		handed = true // the user side gives the buffer back
		return writeOK(w)
	case <-p.done:
		return invalidID(msg.ID)
	case <-r.Context().Done():
		return nil
	}
}

func writeOK(w http.ResponseWriter) error {
	w.Header()["Content-Type"] = textPlain
	_, err := w.Write(okBody)
	return err
}

// serveRequestStream is /server/requeststream?id=<id>: the user's bytes
// after a 101 upgrade, a block at a time.
func (g *Relay) serveRequestStream(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(w, "relay.requeststream")
	id := r.URL.Query().Get("id")
	if id == "" {
		return errMissingID
	}
	name, ok := nameOfID(id)
	if !ok {
		return gone(id)
	}
	if !g.allow(r, auth.Serve, name) {
		return forbidden(auth.Serve, name)
	}
	p := g.lookup(id)
	if p == nil {
		if g.hub.ForwardToNodes(w, r, name, nil, func(st int) bool { return st != http.StatusGone }) {
			return nil
		}
		return gone(id)
	}
	t := time.NewTimer(g.opts.RequestStreamTimeout)
	defer t.Stop()
	var block []byte
	select {
	case block = <-p.up:
		p.touch()
	case <-t.C:
	case <-p.done:
		return gone(id)
	case <-r.Context().Done():
		return nil
	}
	h := w.Header()
	h.Set("Content-Type", StreamContentType)
	h.Set("Content-Length", strconv.Itoa(len(block)))
	_, err := w.Write(block)
	return err
}

// readMessage reads a posted message whole, into a pooled buffer sized
// for it (chunks are large: no doubling and copying, no fresh allocation
// per chunk). The size is the declared length, or for a message of
// unknown length (chunked encoding) the end of its body as the message's
// start declares it. The caller gives the buffer back with putMessage
// once nothing refers to it.
//
// The message is read before it can be authorized (the id inside it names
// the backend), so what an anonymous client may make the server hold is
// bounded: sizes it declares are set aside only within
// MaxResponseReserveBytes for all messages still arriving (beyond it, the
// buffer grows with the bytes that actually came), and the body must
// arrive within InactiveRequestTimeout, after which no request would have
// survived without a chunk anyway.
func (g *Relay) readMessage(w http.ResponseWriter, r *http.Request, prefix []byte) ([]byte, error) {
	max := g.opts.MaxResponseMessageBytes
	if int64(len(prefix)) > max {
		return nil, errTooLarge
	}
	b, err := g.readBody(http.MaxBytesReader(w, r.Body, max-int64(len(prefix))), r.ContentLength, max, prefix)
	if err != nil {
		return nil, bodyError(w, err)
	}
	return b, nil
}

// bodyError is the answer to a posted message that could not be read.
func bodyError(w http.ResponseWriter, err error) error {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return errTooLarge
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The deadline stays: the rest of the body is not waited for and
		// the connection closes after the answer.
		w.Header().Set("Connection", "close")
		return httpapi.ErrBodyTimeout
	}
	return httpapi.ErrBodyIncomplete
}

// readBody reads the rest of a message of declared length n (or unknown:
// -1) whose start, prefix, was read already.
func (g *Relay) readBody(body io.Reader, n, max int64, prefix []byte) ([]byte, error) {
	if n > 0 && n <= max && n >= int64(len(prefix)) && g.reserve(n) {
		defer g.reserved.Add(-n)
		b := getMessage(int(n))
		k := copy(b, prefix)
		if _, err := io.ReadFull(body, b[k:]); err != nil {
			putMessage(b)
			return nil, err
		}
		return b, nil
	}
	return g.readUnsized(body, max, prefix)
}

// unsizedStart is the first buffer for a message of unknown length: room
// for the start of a chunk (status, headers, the body's length) or for a
// whole small one. unsizedTail is the room left after the body for the
// fields that follow it (the id, eof, trailers) before the buffer grows.
const (
	unsizedStart = 4 << 10
	unsizedTail  = 4 << 10
)

// readUnsized reads a message whose length was not declared, or whose
// declared length could not be set aside. Once the buffer holds the body
// field's length (wire.ResponseSizeHint), and that length can be set
// aside, the buffer is sized for the whole message, so the body is read
// in place; until then, and if the fields after the body outgrow the room
// left for them, it doubles.
func (g *Relay) readUnsized(body io.Reader, limit int64, prefix []byte) ([]byte, error) {
	b := append(make([]byte, 0, max(unsizedStart, len(prefix))), prefix...)
	hinted := false
	var held int64 // bytes set aside for this message
	defer func() { g.reserved.Add(-held) }()
	for {
		if len(b) == cap(b) {
			want := 2 * cap(b)
			if !hinted {
				if n, ok := wire.ResponseSizeHint(b); ok {
					hinted = true
					sized := int64(min(n+unsizedTail, int(limit)+1))
					if sized > int64(want) && g.reserve(sized) {
						held = sized
						want = int(sized)
					}
				}
			}
			// A declared length beyond the limit gets the limit: the
			// reader fails before the buffer fills.
			want = max(int(min(int64(want), limit+1)), len(b)+1)
			nb := getMessage(want)[:len(b)]
			copy(nb, b)
			putMessage(b)
			b = nb
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			putMessage(b)
			return nil, err
		}
	}
}

// reserve sets n bytes aside for a message still arriving, when that keeps
// the total within MaxResponseReserveBytes.
func (g *Relay) reserve(n int64) bool {
	for {
		cur := g.reserved.Load()
		if cur+n > g.opts.MaxResponseReserveBytes {
			return false
		}
		if g.reserved.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// Message buffers are pooled by power-of-two size classes from 64 KiB to
// 32 MiB; smaller and larger ones are left to the allocator.
const (
	minPooled = 16 // 64 KiB
	maxPooled = 25 // 32 MiB
)

var messagePools [maxPooled + 1]sync.Pool

func sizeClass(n int) int {
	c := minPooled
	for c <= maxPooled && 1<<c < n {
		c++
	}
	return c
}

func getMessage(n int) []byte {
	c := sizeClass(n)
	if n < 1<<minPooled/2 || c > maxPooled {
		return make([]byte, n)
	}
	if b, ok := messagePools[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<c)
}

func putMessage(b []byte) {
	c := sizeClass(cap(b))
	if c <= maxPooled && cap(b) == 1<<c {
		b = b[:0]
		messagePools[c].Put(&b)
	}
}

func (g *Relay) lookup(id string) *pending {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pending[id]
}

// pollStart counts a poll for name, creating (and registering with the
// hub) the backend on its first poll. ok is false while shutting down.
func (g *Relay) pollStart(name string) (b *backend, first, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return nil, false, false
	}
	b = g.backends[name]
	if b == nil {
		first = true
		b = &backend{g: g, name: name, queued: make(chan struct{}, 1)}
		g.backends[name] = b
		b.reg = g.hub.Register(name, b)
	}
	if b.idle != nil {
		b.idle.Stop()
	}
	b.polls++
	g.changedLocked()
	return b, first, true
}

// pollEnd uncounts a poll; a backend without polls is forgotten after the
// inactive backend timeout.
func (g *Relay) pollEnd(b *backend) {
	g.mu.Lock()
	defer g.mu.Unlock()
	b.polls--
	b.lastPoll = time.Now()
	if b.polls == 0 && !g.closing && g.backends[b.name] == b {
		if b.idle == nil {
			b.idle = time.AfterFunc(g.opts.InactiveBackendTimeout, func() { g.forget(b) })
		} else {
			b.idle.Reset(g.opts.InactiveBackendTimeout)
		}
	}
	g.changedLocked()
}

func (g *Relay) forget(b *backend) {
	g.mu.Lock()
	if b.polls > 0 || g.backends[b.name] != b || g.closing || time.Since(b.lastPoll) < g.opts.InactiveBackendTimeout {
		g.mu.Unlock()
		return
	}
	delete(g.backends, b.name)
	g.changedLocked()
	g.mu.Unlock()
	b.reg.Close()
	g.log.Info("Relay client forgotten", "ServerName", b.name, "inactive", g.opts.InactiveBackendTimeout.String())
}

func (g *Relay) changedLocked() {
	if g.changed != nil {
		close(g.changed)
		g.changed = nil
	}
}

// Known reports whether a relay client has polled for name recently enough
// to be known on this node.
func (g *Relay) Known(name string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.backends[name] != nil
}

// WaitForPolls blocks until at least n polls for name are parked on this
// node, or ctx ends: a readiness signal for tests and tools.
func (g *Relay) WaitForPolls(ctx context.Context, name string, n int) error {
	got, err := g.waitFor(ctx, name, n, func(b *backend) int { return b.polls })
	if err != nil {
		return fmt.Errorf("%d polls for %q parked, want %d or more: %w", got, name, n, err)
	}
	return nil
}

// WaitForWaiting blocks until at least n user requests for name wait on
// this node for a poll to take them, or ctx ends: a readiness signal for
// tests and tools.
func (g *Relay) WaitForWaiting(ctx context.Context, name string, n int) error {
	got, err := g.waitFor(ctx, name, n, func(b *backend) int { return len(b.queue) })
	if err != nil {
		return fmt.Errorf("%d requests for %q wait for a poll, want %d or more: %w", got, name, n, err)
	}
	return nil
}

// waitFor waits until count of name's backend (0 while there is none) is
// at least n, waking on every change; it returns the last count and
// ctx's error when ctx ends first.
func (g *Relay) waitFor(ctx context.Context, name string, n int, count func(*backend) int) (int, error) {
	for {
		g.mu.Lock()
		got := 0
		if b := g.backends[name]; b != nil {
			got = count(b)
		}
		if g.changed == nil {
			g.changed = make(chan struct{})
		}
		ch := g.changed
		g.mu.Unlock()
		if got >= n {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-ch:
		}
	}
}

// Shutdown drains the hub first: new relays are refused, those in flight
// finish while the listener is still open (their relay clients keep
// posting chunks), until ctx ends. Then parked polls are answered 408 (the
// relay client polls again, elsewhere), the requests still open end and
// every backend is forgotten. It is idempotent.
func (g *Relay) Shutdown(ctx context.Context) error {
	err := g.hub.Shutdown(ctx)
	g.mu.Lock()
	if g.closing {
		g.mu.Unlock()
		return err
	}
	g.closing = true
	close(g.quit)
	var backends []*backend
	for _, b := range g.backends {
		if b.idle != nil {
			b.idle.Stop()
		}
		backends = append(backends, b)
	}
	g.backends = map[string]*backend{}
	var pend []*pending
	for _, p := range g.pending {
		pend = append(pend, p)
	}
	g.changedLocked()
	g.mu.Unlock()
	for _, p := range pend {
		p.finish(relay.ErrShuttingDown)
	}
	for _, b := range backends {
		b.reg.Close()
	}
	return err
}
