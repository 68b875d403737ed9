// Package httpapi holds what every front door shares on the HTTP side:
// handlers that return errors and the one place that turns those errors into
// responses (the error catalogue, ToError, Handle), the node's one route
// table (Routes), request metrics labelled by route, request bodies read
// whole within limits, and the operations endpoints (/healthz, /readyz,
// /metrics).
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/postern/postern/internal/store"
)

// Error is an error with its HTTP answer: a status, a one-line message and,
// for front doors whose wire format lists problems, details.
type Error struct {
	Status  int
	Message string
	Details []string
	// Header is added to the response.
	Header http.Header
}

func (e *Error) Error() string {
	if len(e.Details) > 0 {
		return fmt.Sprintf("%d %s: %s", e.Status, e.Message, strings.Join(e.Details, "; "))
	}
	return fmt.Sprintf("%d %s", e.Status, e.Message)
}

// Errorf returns an *Error with a formatted one-line message.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Message: oneLine(fmt.Sprintf(format, args...))}
}

// WithHeader returns e with header k set to v.
func (e *Error) WithHeader(k, v string) *Error {
	if e.Header == nil {
		e.Header = make(http.Header)
	}
	e.Header.Set(k, v)
	return e
}

// The catalogue of errors shared by several front doors. Front doors keep
// their own wire-exact texts next to their handlers.
var (
	ErrNotFound        = &Error{Status: http.StatusNotFound, Message: "not found"}
	ErrShuttingDown    = &Error{Status: http.StatusServiceUnavailable, Message: "server is shutting down"}
	ErrInternal        = &Error{Status: http.StatusInternalServerError, Message: "internal error"}
	ErrRequestTooLarge = &Error{Status: http.StatusRequestEntityTooLarge, Message: "request body too large"}
	ErrStorageFull     = &Error{Status: http.StatusInsufficientStorage, Message: "storage full: write refused"}
)

// MethodNotAllowed is the 405 answer listing the allowed methods.
func MethodNotAllowed(allow ...string) *Error {
	return Errorf(http.StatusMethodNotAllowed, "method not allowed").WithHeader("Allow", strings.Join(allow, ", "))
}

// ErrorHeader is on every error answer postern writes itself: a one-line
// explanation for people and tools, more specific than the body where the
// wire format fixes the body. Its presence also tells a client that the
// answer came from postern, not from a proxy or another server.
const ErrorHeader = "X-Postern-Error"

// MarkError sets ErrorHeader for e unless e's own header (or the handler)
// set it: e's message and details, on one line of printable ASCII.
func MarkError(h http.Header, e *Error) {
	if h.Get(ErrorHeader) != "" || e.Header.Get(ErrorHeader) != "" {
		return
	}
	msg := e.Message
	if len(e.Details) > 0 {
		msg += ": " + strings.Join(e.Details, "; ")
	}
	h.Set(ErrorHeader, HeaderText(msg))
}

// HeaderText makes s fit a header value: one line, non-ASCII and control
// characters escaped as in Go strings, at most 300 bytes.
func HeaderText(s string) string {
	q := strconv.QuoteToASCII(oneLine(s))
	q = q[1 : len(q)-1]
	if len(q) > 300 {
		q = q[:300]
	}
	return q
}

// ToError maps any error to the answer it deserves. It returns nil when no
// answer can or need be written (the client went away).
func ToError(r *http.Request, err error) *Error {
	var e *Error
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		return e
	case errors.As(err, &tooLarge):
		return ErrRequestTooLarge
	case errors.Is(err, store.ErrNoSpace):
		return ErrStorageFull
	case errors.Is(err, store.ErrClosed):
		return ErrShuttingDown
	case errors.Is(err, store.ErrUnavailable):
		// The engine's reason is one line by contract and names no secret.
		return Errorf(http.StatusServiceUnavailable, "%s", err.Error())
	case errors.Is(err, store.ErrOutcomeUnknown):
		reason := strings.TrimPrefix(err.Error(), store.ErrOutcomeUnknown.Error()+": ")
		return Errorf(http.StatusServiceUnavailable, "storage unavailable: %s: the write may have happened", reason)
	case r.Context().Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return nil
	}
	return ErrInternal
}

// Handler is an HTTP handler that returns an error instead of answering it.
type Handler func(w http.ResponseWriter, r *http.Request) error

// ErrorWriter writes e as the response; front doors with their own error
// format (JSON for the inbox) pass their own.
type ErrorWriter func(w http.ResponseWriter, r *http.Request, e *Error)

// WritePlain writes e as a one-line text/plain body.
func WritePlain(w http.ResponseWriter, r *http.Request, e *Error) {
	h := w.Header()
	for k, v := range e.Header {
		h[k] = v
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(e.Status)
	msg := e.Message
	if len(e.Details) > 0 {
		msg += ": " + strings.Join(e.Details, "; ")
	}
	if r.Method != http.MethodHead {
		w.Write([]byte(msg))
	}
}

// Handle adapts h to http.Handler: a returned error is answered by ew
// (WritePlain when nil) unless the handler already started its response.
// Errors that did not come as an *Error (storage failures, bugs) are logged
// with the request; for those clients see only a one-line reason.
func Handle(h Handler, ew ErrorWriter) http.Handler {
	if ew == nil {
		ew = WritePlain
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		if err == nil {
			return
		}
		e := ToError(r, err)
		if e == nil {
			return
		}
		var own *Error
		if !errors.As(err, &own) {
			Logger(w).Log(r.Context(), levelFor(e), "request failed",
				"method", r.Method, "path", r.URL.Path, "status", e.Status, "err", err)
		}
		if rec, ok := w.(*recorder); ok && rec.wroteHeader {
			return // too late for an error answer; the connection is cut by the handler's return
		}
		MarkError(w.Header(), e)
		ew(w, r, e)
	})
}

func levelFor(e *Error) slog.Level {
	if e == ErrInternal {
		return slog.LevelError
	}
	return slog.LevelWarn
}

func oneLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}
