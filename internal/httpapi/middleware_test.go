package httpapi_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
)

// TestRequestMetrics: every request is counted under the route its
// handler named (unmatched when none did) and its status; one whose
// client left before an answer counts as 499.
func TestRequestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := httpapi.NewMetrics(capability.Deps{Registry: reg, Logger: capability.Discard().Logger})
	started, left := make(chan struct{}), make(chan struct{})
	rt := httpapi.NewRoutes(nil)
	rt.Handle("/named", httpapi.Handle(func(w http.ResponseWriter, r *http.Request) error {
		httpapi.SetRoute(w, "demo.named")
		return httpapi.ErrNotFound
	}, nil))
	rt.Handle("/wait", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.SetRoute(w, "demo.wait")
		close(started)
		<-r.Context().Done()
		close(left)
	}))
	srv := httptest.NewServer(m.Wrap(rt))
	defer srv.Close()
	for _, p := range []string{"/named", "/named", "/nowhere"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/wait", nil)
	go func() {
		<-started // the handler parks until the client gives up
		cancel()
	}()
	http.DefaultClient.Do(req)
	defer http.DefaultClient.CloseIdleConnections()
	<-left
	srv.Close() // the handler's deferred count is done once the server is
	want := `
# HELP postern_http_requests_total HTTP requests answered, by route and status code.
# TYPE postern_http_requests_total counter
postern_http_requests_total{code="404",route="demo.named"} 2
postern_http_requests_total{code="404",route="not_found"} 1
postern_http_requests_total{code="499",route="demo.wait"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "postern_http_requests_total"); err != nil {
		t.Fatal(err)
	}
}

// TestReadBody: a body is read whole within its limit; over it, the
// front door's own answer; cut short, 400; too slow, 408 and the
// connection closes.
func TestReadBody(t *testing.T) {
	tooLarge := &httpapi.Error{Status: 413, Message: "Payload too large"}
	h := httpapi.Handle(func(w http.ResponseWriter, r *http.Request) error {
		b, err := httpapi.ReadBody(w, r, 10, 200*time.Millisecond, tooLarge)
		if err != nil {
			return err
		}
		_, err = w.Write(append([]byte("got "), b...))
		return err
	}, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	post := func(body io.Reader) (int, string) {
		resp, err := http.Post(srv.URL, "text/plain", body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(strings.NewReader("0123456789")); code != 200 || body != "got 0123456789" {
		t.Fatalf("within the limit: %d %q", code, body)
	}
	if code, body := post(strings.NewReader("0123456789x")); code != 413 || body != "Payload too large" {
		t.Fatalf("declared over the limit: %d %q", code, body)
	}
	// Chunked: the limit is found while reading.
	if code, body := post(io.MultiReader(strings.NewReader("01234"), strings.NewReader("567890123"))); code != 413 || body != "Payload too large" {
		t.Fatalf("chunked over the limit: %d %q", code, body)
	}
	// A client that announces 10 bytes and sends 3, then nothing.
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(c) // the server closes after its answer
	if !bytes.HasPrefix(got, []byte("HTTP/1.1 408 ")) || !bytes.Contains(got, []byte("request body not received in time")) || !bytes.Contains(got, []byte("Connection: close")) {
		t.Fatalf("slow body: %q", got)
	}
	// One that announces 10 bytes, sends 3 and ends its side: 400, not
	// a 3-byte body.
	for _, sent := range []string{"abc", ""} {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"+sent)
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(c)
		if !bytes.HasPrefix(got, []byte("HTTP/1.1 400 ")) || !bytes.Contains(got, []byte("request body incomplete")) {
			t.Fatalf("body cut short after %q: %q", sent, got)
		}
	}
}

// TestFlushErrorReachesTheHandler: behind the request metrics, a flush
// that cannot reach the client (here: past its write deadline) is an error
// the handler sees, not a success: the front doors settle deliveries on
// it.
func TestFlushErrorReachesTheHandler(t *testing.T) {
	flushed := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
			flushed <- err
			return
		}
		w.Header().Set("Content-Length", "5")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("hello"))
		flushed <- rc.Flush()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: httpapi.NewMetrics(capability.Deps{Registry: prometheus.NewRegistry(), Logger: capability.Discard().Logger}).Wrap(h), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	res, err := http.Get("http://" + ln.Addr().String() + "/")
	if err == nil {
		io.ReadAll(res.Body)
		res.Body.Close()
	}
	if err := <-flushed; err == nil {
		t.Fatal("a flush past the write deadline reported success")
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestPanicIsAnswered500AndLogged: a handler that panics before answering
// gets its client a 500 "internal error" (not a dropped connection), an
// error log line with the stack, and a count under code 500; one that
// panics in the middle of its answer has the answer cut off.
func TestPanicIsAnswered500AndLogged(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	m := httpapi.NewMetrics(capability.Deps{Registry: reg, Logger: log})
	rt := httpapi.NewRoutes(nil)
	rt.Handle("/early", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.SetRoute(w, "demo.early")
		var p *struct{ n int }
		_ = p.n // a nil dereference, as a bug would
	}))
	rt.Handle("/late", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.SetRoute(w, "demo.late")
		w.Header().Set("Content-Length", "100")
		w.Write([]byte("partial"))
		http.NewResponseController(w).Flush()
		panic("half way")
	}))
	srv := httptest.NewServer(m.Wrap(rt))
	defer srv.Close()
	defer http.DefaultClient.CloseIdleConnections()

	resp, err := http.Get(srv.URL + "/early")
	if err != nil {
		t.Fatalf("a panic before the answer: %v, want a 500", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 500 || strings.TrimSpace(string(body)) != "internal error" {
		t.Fatalf("a panic before the answer: %d %q", resp.StatusCode, body)
	}

	resp, err = http.Get(srv.URL + "/late")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("a panic in the middle of an answer: the answer was not cut off")
	}
	srv.Close() // the handlers' deferred counts are done once the server is

	want := `
# HELP postern_http_requests_total HTTP requests answered, by route and status code.
# TYPE postern_http_requests_total counter
postern_http_requests_total{code="500",route="demo.early"} 1
postern_http_requests_total{code="500",route="demo.late"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "postern_http_requests_total"); err != nil {
		t.Error(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"level=ERROR", "route=demo.early", "nil pointer dereference", "middleware_test.go", "route=demo.late", "half way"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
