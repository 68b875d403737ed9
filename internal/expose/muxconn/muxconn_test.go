package muxconn_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/expose/muxconn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStreams runs yamux over Conn both ways: many streams echo payloads
// of every size, gathered writes and all, and arrive intact.
func TestStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	serverDone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(serverDone)
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ws.SetReadLimit(muxconn.ReadLimit())
		sess, _ := yamux.Server(muxconn.Conn(ctx, ws), muxconn.Config(time.Second, 256<<10))
		defer sess.Close()
		for {
			s, err := sess.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(s, s); s.Close() }()
		}
	}))
	defer srv.Close()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(muxconn.ReadLimit())
	sess, err := yamux.Client(muxconn.Conn(ctx, ws), muxconn.Config(time.Second, 256<<10))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			payload := make([]byte, 1+i*i*8000)
			rand.Read(payload)
			s, err := sess.Open()
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			go func() { s.Write(payload); s.Close() }() // Close half-closes a yamux stream
			got, err := io.ReadAll(s)
			if err != nil || !bytes.Equal(got, payload) {
				t.Errorf("stream %d: %d of %d bytes, %v", i, len(got), len(payload), err)
			}
		})
	}
	wg.Wait()
	sess.Close()
	ws.CloseNow()
	<-serverDone
}

// TestCloseSendsWhatWasWritten: what was written before Close reaches the
// other end, although Write returns before the gathered message is sent.
// (An agent that stopped right after a drained request's answer lost its
// end this way, and the user got 502 "session shutdown".)
func TestCloseSendsWhatWasWritten(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan int, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			got <- -1
			return
		}
		ws.SetReadLimit(muxconn.ReadLimit())
		n, _ := io.Copy(io.Discard, muxconn.Conn(ctx, ws))
		ws.CloseNow()
		got <- int(n)
	}))
	defer srv.Close()
	for round := range 50 {
		ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
		if err != nil {
			t.Fatal(err)
		}
		c := muxconn.Conn(ctx, ws)
		chunk := make([]byte, 1000)
		for range 100 {
			if _, err := c.Write(chunk); err != nil {
				t.Fatalf("round %d: write: %v", round, err)
			}
		}
		c.Close()
		if n := <-got; n != 100*len(chunk) {
			t.Fatalf("round %d: the other end read %d of %d bytes written before Close", round, n, 100*len(chunk))
		}
	}
}
