package expose_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/relay"
)

// TestReadyAgentIsReachable: an agent that reports itself ready (OnReady,
// the "expose: ready" line) is reachable at once; its name used to be
// registered only after the handshake's answer, so a request sent right
// then could get 502 "no agent is connected".
func TestReadyAgentIsReachable(t *testing.T) {
	n := startNode(t, nil)
	local := headerEcho(t)
	cl, _ := client.New(n.URL)
	for i := range 20 {
		// A name per attempt: the previous agent may still be leaving.
		name := fmt.Sprintf("quick%d", i)
		ctx, cancel := context.WithCancel(context.Background())
		got := make(chan string, 1)
		done := make(chan error, 1)
		go func() {
			done <- cl.Expose(ctx, client.ExposeOptions{
				Name: name, Local: local, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				OnReady: func(string) {
					resp, body := do(t, n, "GET", name+"."+domain, "/now", nil)
					got <- resp.Status + " " + body
					cancel()
				},
			})
		}()
		if r := <-got; !strings.HasPrefix(r, "200 OK path=/now ") {
			t.Fatalf("attempt %d: request right after ready: %q", i+1, r)
		}
		if err := <-done; err != nil {
			t.Fatalf("Expose: %v", err)
		}
	}
}

// headerEcho is a local service that answers with what it was sent.
func headerEcho(t *testing.T) string {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "path="+r.URL.EscapedPath()+" query="+r.URL.RawQuery+" xff="+r.Header.Get("X-Forwarded-For")+" auth="+r.Header.Get("Authorization")+" mark="+r.Header.Get(relay.ForwardedHeader))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}
