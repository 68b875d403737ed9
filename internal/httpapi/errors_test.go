package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/store"
)

// answer is what a client saw.
type answer struct {
	status int
	body   string
	h      http.Header
}

func do(t *testing.T, h http.Handler, method, path string) answer {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b), resp.Header}
}

// logs collects what the handlers log, through the request metrics'
// logger (httpapi.Logger).
type logs struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestErrorCatalogue: every kind of error a handler returns gets the
// answer the catalogue promises: status, one-line text/plain body,
// headers; failures that are not the client's are logged, the client's
// own are not.
func TestErrorCatalogue(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		status int
		body   string
		header [2]string
		logged bool
	}{
		{"own error", &httpapi.Error{Status: 418, Message: "short and stout"}, 418, "short and stout", [2]string{}, false},
		{"details", &httpapi.Error{Status: 400, Message: "Bad request", Details: []string{"a", "b"}}, 400, "Bad request: a; b", [2]string{}, false},
		{"wrapped own error", fmt.Errorf("while sending: %w", httpapi.ErrNotFound), 404, "not found", [2]string{}, false},
		{"method not allowed", httpapi.MethodNotAllowed("GET", "HEAD"), 405, "method not allowed", [2]string{"Allow", "GET, HEAD"}, false},
		{"errorf is one line", httpapi.Errorf(400, "bad %s\nsecond line", "input"), 400, "bad input", [2]string{}, false},
		{"own header", httpapi.Errorf(503, "busy").WithHeader("Retry-After", "1"), 503, "busy", [2]string{"Retry-After", "1"}, false},
		{"body too large", &http.MaxBytesError{Limit: 10}, 413, "request body too large", [2]string{}, true},
		{"storage full", fmt.Errorf("append: %w", store.ErrNoSpace), 507, "storage full: write refused", [2]string{}, true},
		{"storage closed", store.ErrClosed, 503, "server is shutting down", [2]string{}, true},
		{"storage unavailable", fmt.Errorf("%w: redis down", store.ErrUnavailable), 503, "storage unavailable: redis down", [2]string{}, true},
		{"anything else", errors.New("nil map write at queue.go:12"), 500, "internal error", [2]string{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var l logs
			m := httpapi.NewMetrics(capability.Deps{Logger: slog.New(slog.NewTextHandler(&l, nil))})
			h := m.Wrap(httpapi.Handle(func(http.ResponseWriter, *http.Request) error { return c.err }, nil))
			a := do(t, h, "GET", "/x")
			if a.status != c.status || a.body != c.body {
				t.Fatalf("%d %q, want %d %q", a.status, a.body, c.status, c.body)
			}
			if ct := a.h.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if a.h.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("no nosniff")
			}
			if c.header[0] != "" && a.h.Get(c.header[0]) != c.header[1] {
				t.Errorf("%s: %q, want %q", c.header[0], a.h.Get(c.header[0]), c.header[1])
			}
			if logged := strings.Contains(l.String(), "request failed"); logged != c.logged {
				t.Errorf("logged %v, want %v: %s", logged, c.logged, l.String())
			}
			if c.logged && !strings.Contains(l.String(), "path=/x") {
				t.Errorf("the log line does not name the request: %s", l.String())
			}
			// HEAD gets the status and headers, no body.
			if a := do(t, h, "HEAD", "/x"); a.status != c.status || a.body != "" {
				t.Errorf("HEAD: %d %q", a.status, a.body)
			}
		})
	}
}

// TestErrorWriterOfTheFrontDoor: a front door with a wire format of its
// own writes the error its way.
func TestErrorWriterOfTheFrontDoor(t *testing.T) {
	jsonErr := func(w http.ResponseWriter, r *http.Request, e *httpapi.Error) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(e.Status)
		fmt.Fprintf(w, `{"error":%q}`, e.Message)
	}
	h := httpapi.Handle(func(http.ResponseWriter, *http.Request) error { return httpapi.ErrRequestTooLarge }, jsonErr)
	if a := do(t, h, "POST", "/"); a.status != 413 || a.body != `{"error":"request body too large"}` {
		t.Fatalf("%d %q", a.status, a.body)
	}
}

// TestErrorAfterTheAnswerStarted: once a handler started its answer, an
// error it returns does not write a second one.
func TestErrorAfterTheAnswerStarted(t *testing.T) {
	m := httpapi.NewMetrics(capability.Discard())
	h := m.Wrap(httpapi.Handle(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(202)
		io.WriteString(w, "partial")
		return errors.New("failed half way")
	}, nil))
	if a := do(t, h, "GET", "/"); a.status != 202 || a.body != "partial" {
		t.Fatalf("%d %q", a.status, a.body)
	}
}

// TestNoAnswerForAClientThatLeft: a handler that fails because its client
// went away gets nothing written and nothing logged.
func TestNoAnswerForAClientThatLeft(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	ctx, cancel := context.WithCancel(r.Context())
	cancel()
	r = r.WithContext(ctx)
	if e := httpapi.ToError(r, fmt.Errorf("long-poll: %w", context.Canceled)); e != nil {
		t.Fatalf("answer %v for a client that left", e)
	}
	// The same error while the client is still there is the server's.
	if e := httpapi.ToError(httptest.NewRequest("GET", "/", nil), context.DeadlineExceeded); e != httpapi.ErrInternal {
		t.Fatalf("%v, want internal error", e)
	}
	if httpapi.ToError(r, nil) != nil {
		t.Fatal("an answer for no error")
	}
}

// TestErrorString: the error's text is its answer, for logs.
func TestErrorString(t *testing.T) {
	e := &httpapi.Error{Status: 400, Message: "Bad request", Details: []string{"x missing"}}
	if e.Error() != "400 Bad request: x missing" || httpapi.ErrNotFound.Error() != "404 not found" {
		t.Fatalf("%q %q", e.Error(), httpapi.ErrNotFound.Error())
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
