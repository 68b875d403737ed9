package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

// flakyServer serves a real postern node behind a front that answers the
// first failures requests with status (and Retry-After, when set), or by
// closing the connection when status is 0, or by closing it after the
// node answered when status is -1 (the answer lost), and records the
// Idempotency-Key of every produce it sees.
type flakyServer struct {
	URL string

	mu       sync.Mutex
	failures int
	status   int
	after    string
	keys     []string
	tries    int
}

func newFlaky(t *testing.T, failures, status int, after string) *flakyServer {
	t.Helper()
	n := servertest.Start(t, servertest.Config())
	f := &flakyServer{failures: failures, status: status, after: after}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.tries++
		if r.Method == http.MethodPost {
			f.keys = append(f.keys, r.Header.Get("Idempotency-Key"))
		}
		fail := f.failures > 0
		f.failures--
		f.mu.Unlock()
		if fail {
			if f.status <= 0 {
				if f.status < 0 {
					proxyTo(httptestDiscard{}, r, n.URL)
				}
				hj, _ := w.(http.Hijacker)
				conn, _, _ := hj.Hijack()
				conn.Close()
				return
			}
			if f.after != "" {
				w.Header().Set("Retry-After", f.after)
			}
			http.Error(w, "storage unavailable: try again", f.status)
			return
		}
		proxyTo(w, r, n.URL)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	f.URL = "http://" + ln.Addr().String()
	return f
}

// httptestDiscard is a ResponseWriter that drops the answer.
type httptestDiscard struct{}

func (httptestDiscard) Header() http.Header         { return http.Header{} }
func (httptestDiscard) Write(b []byte) (int, error) { return len(b), nil }
func (httptestDiscard) WriteHeader(int)             {}

// proxyTo forwards r to base and copies the answer back.
func proxyTo(w http.ResponseWriter, r *http.Request, base string) {
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), r.Body)
	req.Header = r.Header.Clone()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer res.Body.Close()
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(res.StatusCode)
	io.Copy(w, res.Body)
}

func quickRetry() client.Option {
	return client.WithRetry(client.RetryPolicy{Attempts: 4, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
}

// TestSendRetriesWithOneKey: a produce that meets 503s, 429s or a cut
// connection is retried with the same Idempotency-Key, and lands once.
func TestSendRetriesWithOneKey(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		after  string
	}{{"503", 503, ""}, {"429 with Retry-After", 429, "0"}, {"connection cut", 0, ""}, {"answers lost", -1, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFlaky(t, 2, tc.status, tc.after)
			c, _ := client.New(f.URL, quickRetry())
			ctx := context.Background()
			res, err := c.Tunnel("jobs").Send(ctx, []byte("job 1"), client.SendOptions{})
			if err != nil || res.ID == "" || res.Replayed != (tc.status < 0) {
				t.Fatalf("Send = %+v, %v", res, err)
			}
			f.mu.Lock()
			keys := f.keys
			f.mu.Unlock()
			if len(keys) != 3 || keys[0] == "" || keys[0] != keys[1] || keys[1] != keys[2] {
				t.Fatalf("keys sent: %q, want one key three times", keys)
			}
			if n, err := c.Tunnel("jobs").Len(ctx); n != 1 || err != nil {
				t.Fatalf("Len = %d, %v; want 1", n, err)
			}
			m, ok, err := c.Tunnel("jobs").Receive(ctx, client.ReceiveOptions{})
			if !ok || err != nil || string(m.Body) != "job 1" || m.ID != res.ID {
				t.Fatalf("Receive = %q %v %v", m.Body, ok, err)
			}
		})
	}
}

// TestSendReplayed: an explicit key sent twice answers with the first id,
// marked replayed, and stores one message.
func TestSendReplayed(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	c, _ := client.New(n.URL)
	ctx := context.Background()
	tn := c.Tunnel("orders")
	first, err := tn.Send(ctx, []byte("a"), client.SendOptions{IdempotencyKey: "order-17"})
	if err != nil || first.Replayed {
		t.Fatalf("first Send = %+v, %v", first, err)
	}
	again, err := tn.Send(ctx, []byte("a, again"), client.SendOptions{IdempotencyKey: "order-17"})
	if err != nil || !again.Replayed || again.ID != first.ID {
		t.Fatalf("second Send = %+v, %v; want a replay of %s", again, err, first.ID)
	}
	if n, _ := tn.Len(ctx); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	// Without keys of its own, two sends are two messages.
	bare, _ := client.New(n.URL, client.WithoutIdempotencyKeys())
	bare.Tunnel("bare").Send(ctx, []byte("x"), client.SendOptions{})
	bare.Tunnel("bare").Send(ctx, []byte("x"), client.SendOptions{})
	if n, _ := bare.Tunnel("bare").Len(ctx); n != 2 {
		t.Fatalf("Len without keys = %d, want 2", n)
	}
}

// TestReceiveRetriesAndGivesUp: consume is retried too; with retries off,
// or once the attempts are spent, the last answer is the error.
func TestReceiveRetriesAndGivesUp(t *testing.T) {
	f := newFlaky(t, 2, 503, "")
	c, _ := client.New(f.URL, quickRetry())
	ctx := context.Background()
	if _, ok, err := c.Tunnel("t").Receive(ctx, client.ReceiveOptions{}); ok || err != nil {
		t.Fatalf("Receive through two 503s = %v, %v", ok, err)
	}

	f = newFlaky(t, 1, 503, "")
	off, _ := client.New(f.URL, client.WithoutRetry())
	_, _, err := off.Tunnel("t").Receive(ctx, client.ReceiveOptions{})
	var e *client.Error
	if !errors.As(err, &e) || e.StatusCode != 503 || !strings.Contains(e.Message, "storage unavailable") {
		t.Fatalf("Receive without retries = %v, want the 503", err)
	}

	f = newFlaky(t, 10, 503, "")
	c, _ = client.New(f.URL, quickRetry())
	if _, _, err := c.Tunnel("t").Receive(ctx, client.ReceiveOptions{}); !errors.As(err, &e) || e.StatusCode != 503 {
		t.Fatalf("Receive after the attempts = %v, want the last 503", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tries != 4 {
		t.Fatalf("%d tries, want 4", f.tries)
	}
}

// TestRetryAfterTooLong: a server asking for more than MaxRetryAfter gets
// its answer returned at once.
func TestRetryAfterTooLong(t *testing.T) {
	f := newFlaky(t, 1, 429, "3600")
	c, _ := client.New(f.URL, quickRetry())
	start := time.Now()
	_, err := c.Tunnel("t").Send(context.Background(), []byte("x"), client.SendOptions{})
	var e *client.Error
	if !errors.As(err, &e) || e.StatusCode != 429 || time.Since(start) > 10*time.Second {
		t.Fatalf("Send = %v after %v, want the 429 at once", err, time.Since(start))
	}
}

// TestInboxSendRetriesOnce: an inbox send that meets a 503 is retried with
// its envelope's key (made by Send when empty), and stored once.
func TestInboxSendRetriesOnce(t *testing.T) {
	f := newFlaky(t, 1, 503, "")
	c, _ := client.New(f.URL, quickRetry())
	ctx := context.Background()
	if n, err := c.Inbox("olivia").Send(ctx, client.Envelope{Destination: []string{"george"}, Body: []byte(`"hi"`)}); n != 1 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	mail, _, err := c.Inbox("george").Receive(ctx)
	if err != nil || len(mail) != 1 || len(mail[0].Message.IdempotencyKey) < 12 {
		t.Fatalf("george got %+v, %v", mail, err)
	}
}
