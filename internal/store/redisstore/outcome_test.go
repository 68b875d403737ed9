package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// cutProxy forwards connections to a Redis server and cuts a connection
// (both ways, forwarding nothing more) once its client calls a function
// whose name contains cut (a library load passes).
type cutProxy struct {
	ln    net.Listener
	to    string
	cut   []byte
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startCutProxy(t *testing.T, to, cut string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, to: to, cut: []byte(cut)}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.to)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Go(func() {
			io.Copy(c, up)
			c.Close()
		})
		p.wg.Go(func() {
			defer up.Close()
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					// The client's commands (RESP, upper case
					// names) arrive whole enough for the test's
					// needle: a cut one is never forwarded.
					if b := bytes.ToUpper(buf[:n]); bytes.Contains(b, []byte("FCALL")) && bytes.Contains(b, p.cut) && !bytes.Contains(b, []byte("FUNCTION")) {
						return
					}
					if _, err := up.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		})
	}
}

func (p *cutProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestAppendWhoseFixIsCutIsOutcomeUnknown: an append on the lean path
// whose message is stored, and whose follow-up (the function that applies
// a new queue's settings) meets a lost connection, answers that the
// outcome is not known (a client may retry with its idempotency key), not
// a failure that says nothing was stored, and never crashes the caller.
func TestAppendWhoseFixIsCutIsOutcomeUnknown(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := startCutProxy(t, srv.Addr, "LEANFIX")
	u := strings.Replace(srv.URL(), srv.Addr, p.ln.Addr().String(), 1)
	s := open(t, u, nil)
	defer s.Close()
	// A new queue's first append is the lean path's MULTI, then the fix.
	_, err := s.Append(context.Background(), "t/cut", store.Message{ContentType: "text/plain", Body: []byte("kept")}, store.AppendOptions{})
	if !errors.Is(err, store.ErrOutcomeUnknown) {
		t.Fatalf("append whose fix was cut: %v, want %v", err, store.ErrOutcomeUnknown)
	}
	if !strings.Contains(err.Error(), "redis") || strings.ContainsAny(err.Error(), "\r\n") {
		t.Errorf("reason %q: want one line naming redis", err)
	}
	// The message was stored: a store on the same keys, straight to
	// Redis, hands it out.
	direct := open(t, strings.Replace(u, p.ln.Addr().String(), srv.Addr, 1), nil)
	defer direct.Close()
	l, ok, err := direct.Take(context.Background(), "t/cut", store.TakeDelete, time.Minute)
	if err != nil || !ok || string(l.Body) != "kept" {
		t.Fatalf("the message behind the unknown outcome: %+v %v %v", l, ok, err)
	}
}
