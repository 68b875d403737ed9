package tunnel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/store"
)

// Prefix is where the tunnel routes live.
const Prefix = "/t/"

// Wire-exact answers of the original.
var (
	errDenied      = &httpapi.Error{Status: http.StatusForbidden, Message: "Access denied"}
	errLimitTooBig = &httpapi.Error{Status: http.StatusBadRequest, Message: "Limit must be less than the tunnel max length"}
	errLimitNeg    = &httpapi.Error{Status: http.StatusBadRequest, Message: "Limit must not be negative"}
	errTooLarge    = &httpapi.Error{Status: http.StatusRequestEntityTooLarge, Message: "Request body too large"}
)

// Answers of postern's own.
var (
	errKeyTooLong = &httpapi.Error{Status: http.StatusBadRequest,
		Message: fmt.Sprintf("Idempotency-Key is longer than %d bytes", MaxIdempotencyKeyBytes)}
)

// produceUnknown answers a produce whose store write was sent and not
// answered (err is store.ErrOutcomeUnknown): the message may be stored.
func produceUnknown(err error) *httpapi.Error {
	reason := strings.TrimPrefix(err.Error(), store.ErrOutcomeUnknown.Error()+": ")
	return &httpapi.Error{Status: http.StatusServiceUnavailable,
		Message: "storage unavailable: " + reason + ": the message may have been stored; retrying with the same Idempotency-Key is safe"}
}

// Headers of idempotent produce.
const (
	IdempotencyKeyHeader = "Idempotency-Key"
	ReplayedHeader       = "Idempotent-Replayed"
)

// malformed is the original's "400 Malformed url" for path, with the rule
// it breaks in httpapi.ErrorHeader.
func malformed(path string) *httpapi.Error {
	return (&httpapi.Error{Status: http.StatusBadRequest, Message: "Malformed url"}).
		WithHeader(httpapi.ErrorHeader, httpapi.HeaderText(whyMalformed(path, Prefix)))
}

// drainingHeader marks the empty answer of a long-poll ended by the
// server's shutdown (the original's clients see a plain 204; postern's own
// know not to take it for an empty queue).
const drainingHeader = "X-Postern-Draining"

const queueFullText = "Queue limit reached, consumers are not keeping up"

// Tunnels serves the tunnel routes.
type Tunnels struct {
	core *queue.Core
	opts Options
	auth *authorizer
	h    http.Handler
}

// New returns the tunnels front door on core. Under deps.Policy a token
// granted read or write on /t/<id> may consume from or produce to that
// tunnel, alongside the seed's own schemes (Options).
func New(core *queue.Core, opts Options, deps capability.Deps) (*Tunnels, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	t := &Tunnels{core: core, opts: opts, auth: newAuthorizer(opts, deps.Policy)}
	t.h = httpapi.Handle(t.serve, nil)
	return t, nil
}

// Mount adds the tunnel routes to the node's table.
func (t *Tunnels) Mount(rt *httpapi.Routes) {
	rt.Handle(Prefix, t)
}

func (t *Tunnels) ServeHTTP(w http.ResponseWriter, r *http.Request) { t.h.ServeHTTP(w, r) }

func key(id string) string { return "t/" + id }

// setCORS adds the CORS headers that every tunnel answer carries.
func setCORS(h http.Header) {
	// Every answer carries them: the keys are canonical already and the
	// values are shared (nothing changes a header value in place), so no
	// answer allocates for them.
	h["Access-Control-Allow-Origin"] = corsOrigin
	h["Access-Control-Allow-Methods"] = corsMethods
	h["Access-Control-Expose-Headers"] = corsExpose
}

var (
	corsOrigin  = []string{"*"}
	corsMethods = []string{"GET, POST, DELETE, OPTIONS"}
	// "*" exposes Idempotent-Replayed too; the list is the original's.
	corsExpose = []string{"*, X-Message-Id, X-Queue-Size"}
)

func (t *Tunnels) serve(w http.ResponseWriter, r *http.Request) error {
	setCORS(w.Header())
	// The size check comes before routing and auth, as in the original.
	if r.ContentLength > t.opts.MaxBodyBytes {
		httpapi.SetRoute(w, "tunnel.too_large")
		return errTooLarge
	}
	rt, ok := parseRoute(r.URL.Path, Prefix)
	if !ok {
		httpapi.SetRoute(w, "tunnel.malformed")
		return malformed(r.URL.Path)
	}
	if r.Method == http.MethodOptions {
		httpapi.SetRoute(w, "tunnel.preflight")
		return preflight(w, r)
	}
	if !methodAllowed(allowed[rt.kind], r.Method) {
		httpapi.SetRoute(w, "tunnel.bad_method")
		return httpapi.MethodNotAllowed(allowed[rt.kind]...)
	}
	var body []byte
	if r.Method == http.MethodPost || t.auth.needsBody(r) {
		var err error
		if body, err = httpapi.ReadBody(w, r, t.opts.MaxBodyBytes, t.opts.BodyReadTimeout, errTooLarge); err != nil {
			return err
		}
	}
	if !t.auth.allow(r, actionOf(r.Method), rt.id, body) {
		httpapi.SetRoute(w, "tunnel.denied")
		return errDenied
	}
	var q url.Values // nil reads as empty: most requests carry no query
	if r.URL.RawQuery != "" {
		q = r.URL.Query()
	}
	switch rt.kind {
	case routeTunnel:
		if r.Method == http.MethodPost {
			httpapi.SetRoute(w, "tunnel.produce")
			return t.produce(w, r, rt, q, body)
		}
		httpapi.SetRoute(w, "tunnel.consume")
		return t.consume(w, r, rt, q, 0)
	case routePoll:
		httpapi.SetRoute(w, "tunnel.poll")
		return t.consume(w, r, rt, q, t.pollTimeout(q))
	case routeLen:
		httpapi.SetRoute(w, "tunnel.len")
		n, err := t.core.Len(r.Context(), key(rt.id))
		if err != nil {
			return err
		}
		w.Header().Set("X-Queue-Size", strconv.Itoa(n))
		w.WriteHeader(http.StatusNoContent)
	case routeAll:
		httpapi.SetRoute(w, "tunnel.clear")
		if _, err := t.core.Clear(r.Context(), key(rt.id)); err != nil {
			return err
		}
		w.Header().Set("X-Queue-Size", "0")
		w.WriteHeader(http.StatusNoContent)
	case routeMessage:
		if r.Method == http.MethodDelete {
			httpapi.SetRoute(w, "tunnel.ack")
			if _, err := t.core.Ack(r.Context(), key(rt.id), rt.mid); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		httpapi.SetRoute(w, "tunnel.status")
		return t.status(w, r, rt)
	case routeReply:
		if r.Method == http.MethodPost {
			httpapi.SetRoute(w, "tunnel.reply")
			return t.reply(w, r, rt, body)
		}
		httpapi.SetRoute(w, "tunnel.reply_read")
		return t.readReply(w, r, rt, 0)
	case routeReplyPoll:
		httpapi.SetRoute(w, "tunnel.reply_poll")
		return t.readReply(w, r, rt, t.pollTimeout(q))
	}
	return nil
}

// actionOf is the scoped-token action of a request: reads (consuming
// included) are GETs; produce, ack, reply and clear are writes.
func actionOf(method string) auth.Action {
	if method == http.MethodGet {
		return auth.Read
	}
	return auth.Write
}

func methodAllowed(allow []string, m string) bool {
	for _, a := range allow {
		if a == m {
			return true
		}
	}
	return false
}

func preflight(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("Access-Control-Max-Age", "3600")
	if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
		h.Set("Access-Control-Allow-Headers", req)
	} else {
		// The original's list; a browser sending Idempotency-Key names it
		// in Access-Control-Request-Headers, which is echoed above.
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Hub-Signature-256")
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// number parses a query value as the original did (Lua tonumber): any
// decimal or float; fractions are floored. ok is false for absent values and
// for anything that is not a finite number.
func number(q url.Values, name string) (int64, bool) {
	v := q.Get(name)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return n, true
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	f = math.Floor(f)
	if f > math.MaxInt64/2 {
		return math.MaxInt64 / 2, true
	}
	if f < math.MinInt64/2 {
		return math.MinInt64 / 2, true
	}
	return int64(f), true
}

// pollTimeout is the wait asked for by the timeout parameter, defaulted and
// clamped; zero or negative means no wait.
//
// The original takes a number of seconds; postern also takes a Go
// duration ("5s", "1m30s", "500ms"), which the original silently read as
// absent (the default wait).
func (t *Tunnels) pollTimeout(q url.Values) time.Duration {
	secs, ok := number(q, "timeout")
	if !ok {
		d, err := time.ParseDuration(q.Get("timeout"))
		if err != nil {
			return t.opts.PollTimeout
		}
		return min(max(d, 0), t.opts.MaxPollTimeout)
	}
	if secs <= 0 {
		return 0
	}
	if max := int64(t.opts.MaxPollTimeout / time.Second); secs > max {
		return t.opts.MaxPollTimeout
	}
	return time.Duration(secs) * time.Second
}

func (t *Tunnels) produce(w http.ResponseWriter, r *http.Request, rt route, q url.Values, body []byte) error {
	backpressure, limit := t.opts.Backpressure, t.opts.MaxLen
	if n, ok := number(q, "limit"); ok {
		switch {
		case n < 0:
			return errLimitNeg
		case n == 0:
			backpressure = false
		case n > int64(t.opts.MaxLen):
			return errLimitTooBig
		default:
			backpressure, limit = true, int(n)
		}
	}
	opts := store.AppendOptions{MaxLen: t.opts.MaxLen}
	if backpressure {
		opts.Limit = limit
	}
	if k := r.Header.Get(IdempotencyKeyHeader); k != "" {
		if len(k) > MaxIdempotencyKeyBytes {
			return errKeyTooLong
		}
		opts.DedupKey = k
		opts.DedupWindow = t.opts.IdempotencyWindow
		opts.KeepFirst = true
		opts.DedupMax = t.opts.IdempotencyKeys
	}
	m := store.Message{ContentType: httpapi.StoredContentType(r), Body: body}
	// A client gone away does not cut the write short: it either happens
	// or is refused, and a retry with the key finds it.
	res, err := t.core.Append(context.WithoutCancel(r.Context()), key(rt.id), m, opts)
	if err != nil {
		return produceError(err)
	}
	h := w.Header()
	h.Set("X-Message-Id", res.ID.String())
	if res.Duplicate {
		h.Set(ReplayedHeader, "true")
	}
	if backpressure {
		h.Set("X-Queue-Size", strconv.Itoa(res.Len))
	}
	if res.Trimmed > 0 {
		// Backpressure off and the queue at its cap: say what was dropped.
		h.Set("X-Queue-Trimmed", strconv.Itoa(res.Trimmed))
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

// produceError answers a produce the store refused or may not have done.
// It is apart from produce so that the target of errors.As, which lives on
// the heap, is allocated for a failure only, not for every produce.
func produceError(err error) error {
	var full *store.FullError
	switch {
	case errors.As(err, &full):
		return (&httpapi.Error{Status: http.StatusInsufficientStorage, Message: queueFullText}).
			WithHeader("X-Queue-Size", strconv.Itoa(full.Len))
	case errors.Is(err, store.ErrOutcomeUnknown):
		return produceUnknown(err)
	}
	return err
}

// consume hands out one message, waiting up to wait for it. The message
// is taken under a lease and settled once the answer is written: removed
// (or pending, in pending mode) when it was, queued again in its place
// when it was not.
func (t *Tunnels) consume(w http.ResponseWriter, r *http.Request, rt route, q url.Values, wait time.Duration) error {
	mode := store.TakeDelete
	if q.Has("pending") {
		mode = store.TakePending
	}
	d, ok, err := t.core.Take(r.Context(), key(rt.id), mode, wait)
	if errors.Is(err, queue.ErrShuttingDown) {
		err, ok = nil, false
		w.Header().Set(drainingHeader, "true")
	}
	if err != nil {
		return err
	}
	if !ok {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	w.Header().Set("X-Message-Id", d.ID.String())
	werr := t.writeBody(w, d.Message, d.Deadline)
	// From here on, the client going away must not cut the settling
	// short: it decides whether the message is delivered again.
	ctx := context.WithoutCancel(r.Context())
	if err := d.Settle(ctx, werr == nil); err != nil {
		httpapi.Logger(w).Warn("tunnel: a delivery could not be settled; its message will be handed out again when its lease runs out",
			"tunnel", rt.id, "id", d.ID.String(), "delivered", werr == nil, "err", err)
	}
	return nil
}

// writeBody writes a 200 with m's body and content type, flushed, and
// reports whether the client took it. A write still going at deadline
// (non-zero: a lease's) fails: the message may be handed to someone else
// from then on.
func (t *Tunnels) writeBody(w http.ResponseWriter, m store.Message, deadline time.Time) error {
	h := w.Header()
	ct := m.ContentType
	if ct == "" {
		ct = t.opts.DefaultContentType
	}
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.Itoa(len(m.Body)))
	// The body and its type are the producer's, served on postern's own
	// origin: a browser opening it as a page gets no script and no origin
	// of its own, and no other site may frame it (fetch and API clients
	// ignore these headers).
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox; frame-ancestors 'none'")
	rc := http.NewResponseController(w)
	if !deadline.IsZero() {
		// Not every writer takes a deadline (a test recorder): the lease
		// then bounds the delivery by itself.
		if rc.SetWriteDeadline(deadline) == nil {
			defer rc.SetWriteDeadline(time.Time{})
		}
	}
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(m.Body); err != nil {
		return err
	}
	return rc.Flush()
}

func (t *Tunnels) status(w http.ResponseWriter, r *http.Request, rt route) error {
	st, err := t.core.Status(r.Context(), key(rt.id), rt.mid)
	if err != nil {
		return err
	}
	switch st {
	case store.StatePending:
		w.WriteHeader(http.StatusAccepted)
	case store.StateQueued:
		w.WriteHeader(http.StatusCreated)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
	return nil
}

func (t *Tunnels) reply(w http.ResponseWriter, r *http.Request, rt route, body []byte) error {
	m := store.Message{ContentType: httpapi.StoredContentType(r), Body: body}
	ok, err := t.core.Reply(r.Context(), key(rt.id), rt.mid, m, t.opts.ReplyTTL)
	if err != nil {
		return err
	}
	if ok {
		w.WriteHeader(http.StatusCreated)
	} else {
		w.WriteHeader(http.StatusNoContent)
	}
	return nil
}

func (t *Tunnels) readReply(w http.ResponseWriter, r *http.Request, rt route, wait time.Duration) error {
	m, ok, err := t.core.TakeReply(r.Context(), key(rt.id), rt.mid, wait)
	if errors.Is(err, queue.ErrShuttingDown) {
		err, ok = nil, false
		w.Header().Set(drainingHeader, "true")
	}
	if err != nil {
		return err
	}
	if !ok {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return t.writeBody(w, m, time.Time{})
}
