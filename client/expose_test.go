package client_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

// TestExposeAnswersWhileTheUserSends: a local service that starts its
// answer before it has read the whole request (here: it echoes the body as
// it arrives) is relayed in both directions at once. The agent must not
// consume the rest of the request body, nor close it, when the answer
// starts: net/http's HTTP/1 server does both unless the handler enables
// full duplex, which blocked this exchange and, under load, cut short
// answers to ordinary uploads (the agent's transport, still finishing the
// upload, found the body closed and dropped the connection to the local
// service mid-answer).
func TestExposeAnswersWhileTheUserSends(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.EnableFullDuplex(); err != nil {
			t.Errorf("local service: %v", err)
		}
		w.WriteHeader(http.StatusOK)
		rc.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})}
	go local.Serve(ln)
	t.Cleanup(func() { local.Close() })

	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	n := servertest.Start(t, cfg)
	c, err := client.New(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.Expose(ctx, client.ExposeOptions{
			Name: "duplex", Local: "http://" + ln.Addr().String(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			OnReady: func(string) {
				select {
				case ready <- struct{}{}:
				default:
				}
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Expose: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Expose ended: %v", err)
	}

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	user := &http.Client{Transport: tr}
	body, send := io.Pipe()
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	// The transport reads the body until it ends: end it with the request.
	context.AfterFunc(rctx, func() { send.CloseWithError(rctx.Err()) })
	req, _ := http.NewRequestWithContext(rctx, http.MethodPost, n.URL+"/echo", body)
	req.Host = "duplex.expose.test" + n.URL[strings.LastIndex(n.URL, ":"):]
	first, second := strings.Repeat("1", 3000), strings.Repeat("2", 5000)
	wrote := make(chan error, 1)
	go func() {
		_, err := io.WriteString(send, first)
		wrote <- err
	}()
	resp, err := user.Do(req)
	if err != nil {
		t.Fatalf("no answer while the request was still being sent: %v", err)
	}
	defer resp.Body.Close()
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(first))
	if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != first {
		t.Fatalf("echo of the first part: %q, %v", got, err)
	}
	// The user sends the rest only now that the first part came back.
	go func() {
		_, err := io.WriteString(send, second)
		send.CloseWithError(err)
	}()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != second {
		t.Fatalf("echo of the second part: %d bytes, %v", len(rest), err)
	}
}
