package inbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/version"
)

// Prefix is where the inbox lives: a client of the original pointed at
// http://host:port/inbox works unchanged.
const Prefix = "/inbox"

// RemainingHeader is set on receive and exchange answers that hit
// Options.MaxReceive: how many entries were still waiting when the answer
// was made. The next receive returns them.
const RemainingHeader = "X-Inbox-Remaining"

// Content types of stored entries. They let a receive tell, without
// decoding, which entries need an ack.
const (
	ctMessage    = "application/json; inbox=msg"
	ctMessageAck = "application/json; inbox=msg; ack=true"
	ctAck        = "application/json; inbox=ack"
)

// Errors of the routing layer, in the JSON error shape.
var (
	errNotFound = &httpapi.Error{Status: http.StatusNotFound, Message: "Not found", Details: []string{"no such inbox endpoint: use /send, /receive or /exchange"}}
	errTooLarge = &httpapi.Error{Status: http.StatusRequestEntityTooLarge, Message: "Payload too large"}
)

// sendUnknown answers a send whose store write was sent and not answered
// (err is store.ErrOutcomeUnknown): copies may have been stored.
func sendUnknown(err error) *httpapi.Error {
	reason := strings.TrimPrefix(err.Error(), store.ErrOutcomeUnknown.Error()+": ")
	return &httpapi.Error{Status: http.StatusServiceUnavailable, Message: "Service unavailable",
		Details: []string{"storage unavailable: " + reason + ": the message may have been stored; sending the same envelope again is safe (its idempotencyKey keeps it single)"}}
}

func badRequest(problems ...string) *httpapi.Error {
	return &httpapi.Error{Status: http.StatusBadRequest, Message: "Bad request", Details: problems}
}

// Inbox serves the inbox routes.
type Inbox struct {
	core    *queue.Core
	opts    Options
	policy  *auth.Policy
	m       *metrics
	h       http.Handler
	version []byte
	lim     limits
}

// New returns the inbox front door on core, its metrics on deps.Registry.
// Under deps.Policy a request with "From: X" needs a token (or anonymous
// grant) allowing write on /inbox/X to send and read on /inbox/X to
// receive; without one the From header is trusted, as in the original.
func New(core *queue.Core, opts Options, deps capability.Deps) (*Inbox, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ib := &Inbox{
		core:   core,
		opts:   opts,
		policy: deps.Policy,
		m:      newMetrics(deps.Registry),
		lim:    limits{maxDestinations: opts.MaxDestinations, maxActorBytes: opts.MaxActorBytes},
	}
	ib.version, _ = json.Marshal(struct {
		Version string `json:"version"`
		SHA1    string `json:"sha1"`
		Build   string `json:"build"`
	}{version.Version(), version.Revision(), runtime.Version()})
	ib.h = httpapi.Handle(ib.serve, WriteError)
	return ib, nil
}

// Mount adds the inbox routes to the node's table: /inbox and everything
// under /inbox/.
func (ib *Inbox) Mount(rt *httpapi.Routes) {
	rt.Handle(Prefix, ib)
	rt.Handle(Prefix+"/", ib)
}

func (ib *Inbox) ServeHTTP(w http.ResponseWriter, r *http.Request) { ib.h.ServeHTTP(w, r) }

// statusTitles are the "error" texts of the JSON error shape.
var statusTitles = map[int]string{
	http.StatusBadRequest:            "Bad request",
	http.StatusForbidden:             "Forbidden",
	http.StatusNotFound:              "Not found",
	http.StatusMethodNotAllowed:      "Method not allowed",
	http.StatusRequestTimeout:        "Request timeout",
	http.StatusRequestEntityTooLarge: "Payload too large",
	http.StatusInternalServerError:   "Internal server error",
	http.StatusServiceUnavailable:    "Service unavailable",
	http.StatusInsufficientStorage:   "Insufficient storage",
}

// WriteError writes e in the inbox's JSON error shape,
// {"error": "Bad request", "status": 400, "details": ["...", ...]}, on one
// line. Details are e.Details, or e.Message when it has none.
func WriteError(w http.ResponseWriter, r *http.Request, e *httpapi.Error) {
	h := w.Header()
	for k, v := range e.Header {
		h[k] = v
	}
	setCORS(h)
	title, ok := statusTitles[e.Status]
	if !ok {
		title = http.StatusText(e.Status)
	}
	details := e.Details
	if len(details) == 0 {
		details = []string{e.Message}
	}
	body, _ := json.Marshal(struct {
		Error   string   `json:"error"`
		Status  int      `json:"status"`
		Details []string `json:"details"`
	}{title, e.Status, details})
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// setCORS adds the CORS headers every answer carries. Unlike the
// original, preflights allow the From header, so browsers can call it, and
// there is no Access-Control-Allow-Credentials: with "*" browsers refuse it
// anyway, and postern's credentials are never cookies.
func setCORS(h http.Header) {
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Expose-Headers", RemainingHeader)
}

type routeKind int

const (
	routeVersion routeKind = iota
	routeSend
	routeReceive
	routeExchange
)

var allowed = [...][]string{
	routeVersion:  {"GET", "HEAD", "OPTIONS"},
	routeSend:     {"POST", "OPTIONS"},
	routeReceive:  {"POST", "OPTIONS"},
	routeExchange: {"POST", "OPTIONS"},
}

var routeNames = [...]string{
	routeVersion:  "inbox.version",
	routeSend:     "inbox.send",
	routeReceive:  "inbox.receive",
	routeExchange: "inbox.exchange",
}

// parseRoute maps a path under Prefix to its route. A trailing slash is
// allowed, as the original's router did.
func parseRoute(path string) (routeKind, bool) {
	rest, ok := strings.CutPrefix(path, Prefix)
	if !ok {
		return 0, false
	}
	switch rest {
	case "", "/":
		return routeVersion, true
	case "/send", "/send/":
		return routeSend, true
	case "/receive", "/receive/":
		return routeReceive, true
	case "/exchange", "/exchange/":
		return routeExchange, true
	}
	return 0, false
}

func (ib *Inbox) serve(w http.ResponseWriter, r *http.Request) error {
	setCORS(w.Header())
	rt, ok := parseRoute(r.URL.Path)
	if !ok {
		httpapi.SetRoute(w, "inbox.not_found")
		return errNotFound
	}
	allow := allowed[rt]
	if r.Method == http.MethodOptions {
		httpapi.SetRoute(w, "inbox.preflight")
		h := w.Header()
		methods := strings.Join(allow, ", ")
		h.Set("Allow", methods)
		h.Set("Access-Control-Allow-Methods", methods)
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, From")
		h.Set("Access-Control-Max-Age", "3600")
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if !contains(allow, r.Method) {
		httpapi.SetRoute(w, "inbox.bad_method")
		return methodNotAllowed(allow)
	}
	if rt == routeVersion {
		httpapi.SetRoute(w, routeNames[rt])
		return writeJSON(w, ib.version, "")
	}
	if r.ContentLength > ib.opts.MaxBodyBytes {
		httpapi.SetRoute(w, "inbox.too_large")
		return ib.tooLarge()
	}
	httpapi.SetRoute(w, routeNames[rt])
	actor, idProblem := ib.identity(r)
	switch rt {
	case routeSend:
		return ib.send(w, r, actor, idProblem)
	case routeReceive:
		if idProblem != "" {
			return badRequest(idProblem)
		}
		if err := ib.authorize(w, r, auth.Read, actor); err != nil {
			return err
		}
		return ib.deliver(w, r, actor)
	default:
		return ib.exchange(w, r, actor, idProblem)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func methodNotAllowed(allow []string) *httpapi.Error {
	methods := strings.Join(allow, ", ")
	return (&httpapi.Error{Status: http.StatusMethodNotAllowed, Message: "Method not allowed",
		Details: []string{"method not allowed: use " + methods}}).WithHeader("Allow", methods)
}

func (ib *Inbox) tooLarge() *httpapi.Error {
	e := *errTooLarge
	e.Details = []string{fmt.Sprintf("request body is larger than %d bytes", ib.opts.MaxBodyBytes)}
	return &e
}

// identity returns the actor a request names in its From header (the last
// one when there are several), or the problem with it.
func (ib *Inbox) identity(r *http.Request) (string, string) {
	vs := r.Header.Values("From")
	if len(vs) == 0 {
		return "", problemNoFrom
	}
	a := vs[len(vs)-1]
	switch {
	case a == "":
		return "", problemEmptyActor
	case !utf8.ValidString(a):
		return "", "'From' header is not valid UTF-8"
	case len(a) > ib.opts.MaxActorBytes:
		return "", fmt.Sprintf("'From' header is longer than %d bytes", ib.opts.MaxActorBytes)
	}
	return a, ""
}

// authorize checks, when a token policy is configured, that r (answered by
// w) may take action as actor: write on /inbox/<actor> to send, read to
// receive.
func (ib *Inbox) authorize(w http.ResponseWriter, r *http.Request, action auth.Action, actor string) error {
	if !ib.policy.Enabled() || ib.policy.Allow(r, action, "/inbox/"+actor) {
		return nil
	}
	httpapi.SetRoute(w, "inbox.denied")
	verb := "send as"
	if action == auth.Read {
		verb = "receive for"
	}
	return &httpapi.Error{Status: http.StatusForbidden, Message: "Forbidden",
		Details: []string{auth.Denial(r, verb, quote(actor), action, "/inbox/"+pathText(actor))}}
}

// pathText renders an actor name inside a token policy path for a one-line
// detail: control characters escaped, long names cut.
func pathText(s string) string {
	q := strconv.Quote(s)
	q = q[1 : len(q)-1]
	if len(q) > 64 {
		q = q[:64] + "..."
	}
	return q
}

// quote renders an actor name for a one-line detail.
func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
}

// readEnvelope reads and validates the request's envelope. idProblem, when
// not empty, is listed first among the problems.
func (ib *Inbox) readEnvelope(w http.ResponseWriter, r *http.Request, idProblem string) (envelope, error) {
	data, err := httpapi.ReadBody(w, r, ib.opts.MaxBodyBytes, ib.opts.BodyReadTimeout, ib.tooLarge())
	if err != nil {
		if e, ok := err.(*httpapi.Error); ok && e.Status == http.StatusRequestEntityTooLarge {
			httpapi.SetRoute(w, "inbox.too_large")
		}
		return envelope{}, err
	}
	env, problems := parseEnvelope(data, ib.lim)
	if idProblem != "" {
		problems = append([]string{idProblem}, problems...)
	}
	if len(problems) > 0 {
		return envelope{}, badRequest(problems...)
	}
	return env, nil
}

func (ib *Inbox) send(w http.ResponseWriter, r *http.Request, actor, idProblem string) error {
	if idProblem == "" {
		if err := ib.authorize(w, r, auth.Write, actor); err != nil {
			return err
		}
	}
	env, err := ib.readEnvelope(w, r, idProblem)
	if err != nil {
		return err
	}
	if err := ib.store(r.Context(), actor, env); err != nil {
		return err
	}
	return writeJSON(w, strconv.AppendInt([]byte(`{"sent":`), int64(len(env.Destinations)), 10), "}")
}

func (ib *Inbox) exchange(w http.ResponseWriter, r *http.Request, actor, idProblem string) error {
	if idProblem == "" {
		if err := ib.authorize(w, r, auth.Write, actor); err != nil {
			return err
		}
		if err := ib.authorize(w, r, auth.Read, actor); err != nil {
			return err
		}
	}
	env, err := ib.readEnvelope(w, r, idProblem)
	if err != nil {
		return err
	}
	if err := ib.store(r.Context(), actor, env); err != nil {
		return err
	}
	return ib.deliver(w, r, actor)
}

// store puts one copy of the envelope's message in each destination's
// inbox. It runs to the end even if the client goes away, so an envelope
// is not stored halfway because of a disconnect. A destination named twice
// gets one copy (the second replaces the first).
//
// When an inbox is full or the store fails, the copies already stored stay:
// sending the envelope again with the same key is safe, since the copies
// that were stored are replaced, not duplicated.
func (ib *Inbox) store(ctx context.Context, origin string, env envelope) error {
	if len(env.Destinations) == 0 {
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	ct := ctMessage
	if env.ExpectsAck {
		ct = ctMessageAck
	}
	m := store.Message{ContentType: ct, Body: encodeMessage(nil, env.Key, origin, env.Body, env.ExpectsAck, ib.opts.Now())}
	opts := store.AppendOptions{
		Limit:       ib.opts.MaxLen,
		TTL:         ib.opts.Expiration,
		DedupKey:    messageDedupKey(env.Key, origin),
		DedupWindow: ib.opts.Expiration,
		DedupMax:    ib.opts.MaxKeys,
	}
	var full []string
	for _, d := range env.Destinations {
		res, err := ib.core.Append(ctx, queueKey(d), m, opts)
		var fe *store.FullError
		if errors.As(err, &fe) {
			full = append(full, fmt.Sprintf("inbox of %s is full (%d entries)", quote(d), fe.Len))
			continue
		}
		if errors.Is(err, store.ErrOutcomeUnknown) {
			return sendUnknown(err)
		}
		if err != nil {
			return err
		}
		if res.Duplicate {
			ib.m.duplicates.Inc()
		} else {
			ib.m.sent.Inc()
		}
	}
	if len(full) > 0 {
		return &httpapi.Error{Status: http.StatusInsufficientStorage, Message: "Insufficient storage", Details: full}
	}
	return nil
}

// deliver answers with everything waiting for actor (at most MaxReceive
// entries, oldest first) and removes it. The entries are taken under one
// lease, so two concurrent receives never return the same entry, and
// removed only once the answer is written.
//
// The acks of the messages that asked for one are stored before the
// answer is written. If that fails, the entries are queued again and the
// request fails (503): the client may retry, and acks stored meanwhile are
// not duplicated, because they carry their own idempotency key. If the
// answer cannot be written, the entries are queued again too, and the
// acks already stored stay (once each). Whatever fails in between, even
// the process, the lease runs out and the entries are back in their
// places: a message is never lost, though after a failure it may be
// received again.
func (ib *Inbox) deliver(w http.ResponseWriter, r *http.Request, actor string) error {
	if err := r.Context().Err(); err != nil {
		return err
	}
	// From here on, the client going away must not cut a store call in the
	// middle: a take must end in a settle.
	ctx := context.WithoutCancel(r.Context())
	key := queueKey(actor)
	b, err := ib.core.TakeAll(ctx, key, ib.opts.MaxReceive)
	if err != nil {
		return err
	}
	ms := b.Messages
	if err := ib.storeAcks(ctx, actor, ms); err != nil {
		if serr := b.Settle(ctx, false); serr != nil {
			err = errors.Join(err, serr)
		}
		return err
	}
	if len(ms) == ib.opts.MaxReceive {
		// The entries taken are still counted until they are settled.
		if n, err := ib.core.Len(ctx, key); err == nil {
			w.Header().Set(RemainingHeader, strconv.Itoa(max(n-len(ms), 0)))
		}
	}
	size := 2 + len(ms)
	for _, m := range ms {
		size += len(m.Body)
	}
	out := make([]byte, 0, size)
	out = append(out, '[')
	for i, m := range ms {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, m.Body...)
	}
	out = append(out, ']')
	werr := writeDelivery(w, out, b.Deadline)
	if err := b.Settle(ctx, werr == nil); err != nil {
		httpapi.Logger(w).Warn("inbox: a receive could not be settled; its entries will be received again when their lease runs out",
			"entries", len(ms), "delivered", werr == nil, "err", err)
	}
	if werr != nil {
		return werr
	}
	for _, m := range ms {
		if m.ContentType == ctAck {
			ib.m.received.WithLabelValues("ack").Inc()
		} else {
			ib.m.received.WithLabelValues("msg").Inc()
		}
	}
	return nil
}

// storeAcks stores, in each origin's inbox, the ack of every message of ms
// that expected one; receiver is who received them. An ack for a full
// inbox is dropped and counted.
func (ib *Inbox) storeAcks(ctx context.Context, receiver string, ms []store.Message) error {
	now := ib.opts.Now()
	for _, m := range ms {
		s, ok := ib.ackable(m)
		if !ok {
			continue
		}
		a := store.Message{ContentType: ctAck, Body: encodeAck(nil, s.Key, receiver, now)}
		res, err := ib.core.Append(ctx, queueKey(s.Origin), a, store.AppendOptions{
			Limit:       ib.opts.MaxLen,
			TTL:         ib.opts.Expiration,
			DedupKey:    ackDedupKey(s.Key, receiver),
			DedupWindow: ib.opts.Expiration,
			DedupMax:    ib.opts.MaxKeys,
		})
		var full *store.FullError
		if errors.As(err, &full) {
			// The origin does not read its inbox: its ack is dropped
			// rather than the receiver held up or the inbox unbounded.
			ib.m.acksDrop.Inc()
			continue
		}
		if err != nil {
			return err
		}
		if res.Duplicate {
			ib.m.duplicates.Inc()
		} else {
			ib.m.acks.Inc()
		}
	}
	return nil
}

// ackable reports whether m is a message that expects an ack, and what
// the ack needs. The content type answers without decoding for entries
// this package stored.
func (ib *Inbox) ackable(m store.Message) (stored, bool) {
	switch m.ContentType {
	case ctMessage, ctAck:
		return stored{}, false
	}
	return needsAck(m.Body)
}

// writeJSON writes a 200 JSON answer: body followed by tail.
func writeJSON(w http.ResponseWriter, body []byte, tail string) error {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)+len(tail)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(body); err != nil {
		return err
	}
	if tail != "" {
		if _, err := io.WriteString(w, tail); err != nil {
			return err
		}
	}
	return nil
}

// writeDelivery writes a receive's answer and flushes it, so that a
// client that has gone away is noticed while its entries can still be put
// back. A write still going at deadline (the lease's) fails.
func writeDelivery(w http.ResponseWriter, body []byte, deadline time.Time) error {
	rc := http.NewResponseController(w)
	if !deadline.IsZero() && rc.SetWriteDeadline(deadline) == nil {
		defer rc.SetWriteDeadline(time.Time{})
	}
	if err := writeJSON(w, body, ""); err != nil {
		return err
	}
	return rc.Flush()
}
