package gcr_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
)

// tuned runs postern relay's client (gcrclient.Tuned: the backend reached
// on connections of its own) for name against the node.
func (e *env) tuned(name, backendURL string) {
	e.t.Helper()
	e.runClient(name, backendURL, func(o *gcrclient.Options) { *o = gcrclient.Tuned(*o) })
}

// The tuned client keeps its backend connections: one user after another
// is served on the one connection, and what reaches the backend and the
// user is what net/http's Transport carries (body, Host, headers, a
// chunked answer with trailers, a HEAD, an answer without a body).
func TestTunedClientKeepsBackendConnections(t *testing.T) {
	e := start(t, nil)
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/trailer":
			w.Header().Set("Trailer", "X-Sum")
			w.Write([]byte("part1,"))
			w.(http.Flusher).Flush()
			w.Write([]byte("part2"))
			w.Header().Set("X-Sum", "42")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("X-Got-Host", r.Host)
			fmt.Fprintf(w, "%s %s %s %s", r.Method, r.URL.RequestURI(), body, r.Header.Get("X-Mine"))
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	e.tuned("keep", srv.URL)
	for i := range 20 {
		path := fmt.Sprintf("/n/%d?q=%d", i, i)
		r := e.do("POST", "/client/keep"+path, strings.NewReader("body"), "X-Mine", "v", "Host", "app.example")
		e.want(r, 200, "POST "+path+" body v")
		if h := r.h.Get("X-Got-Host"); h != "app.example" {
			t.Fatalf("backend saw Host %q", h)
		}
	}
	r := e.do("GET", "/client/keep/trailer", nil)
	e.want(r, 200, "part1,part2")
	if got := r.tr.Get("X-Sum"); got != "42" {
		t.Fatalf("trailer X-Sum %q", got)
	}
	e.want(e.do("GET", "/client/keep/empty", nil), 204, "")
	r = e.do("HEAD", "/client/keep/head", nil)
	e.want(r, 200, "")
	e.want(e.do("GET", "/client/keep/after", nil), 200, "GET /after  ")
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d backend connections for one user after another, want 1", n)
	}
}

// closingBackend is a backend that closes its connection after every
// answer without saying so (keep-alive as far as the headers say). Each
// answer is "<n>:<body><path>", n counting the requests it answered; the
// channel gets a token once it has closed a connection it answered on.
func closingBackend(t *testing.T) (string, <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	var served atomic.Int64
	closed := make(chan struct{}, 10)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					c.Close()
					return
				}
				body, _ := io.ReadAll(req.Body)
				answer := fmt.Sprintf("%d:%s%s", served.Add(1), body, req.URL.Path)
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(answer), answer)
				c.Close()
				closed <- struct{}{}
			})
		}
	})
	return "http://" + ln.Addr().String(), closed
}

// A backend that closes its connection after every answer without saying
// so: the tuned client notices the closed connection before it sends the
// next request there, so even requests it could not send again (POST)
// never fail for it.
func TestTunedClientSkipsConnectionsTheBackendClosed(t *testing.T) {
	e := start(t, nil)
	be, closed := closingBackend(t)
	e.tuned("closing", be)
	for i := 1; i <= 10; i++ {
		want := fmt.Sprintf("%d:post %d/", i, i)
		e.want(e.do("POST", "/client/closing/", strings.NewReader(fmt.Sprintf("post %d", i))), 200, want)
		// The next request is sent only once the connection is closed,
		// so that it is idle and closed, which is what the peek is for (a
		// close racing the next request's write is a different case:
		// net/http does not send a POST again then either).
		<-closed
	}
}

// The same backend, answering GETs in quick succession: the tuned client
// sends a request that it can send again (GET) on a connection used a
// moment ago without peeking at it first, finds it closed when no answer
// comes, and sends the request again on a new one: every request is
// answered once.
func TestTunedClientResendsGetsOnConnectionsTheBackendClosed(t *testing.T) {
	e := start(t, nil)
	be, closed := closingBackend(t)
	e.tuned("closing-get", be)
	for i := 1; i <= 10; i++ {
		path := fmt.Sprintf("/get-%d", i)
		e.want(e.do("GET", "/client/closing-get"+path, nil), 200, fmt.Sprintf("%d:%s", i, path))
		<-closed
	}
}

// A user who leaves in the middle of a long answer: the tuned client
// closes that backend connection rather than reading the rest, and serves
// the next user on another.
func TestTunedClientDropsConnectionsOfCutAnswers(t *testing.T) {
	e := start(t, nil)
	cut := make(chan struct{})
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/endless" {
			io.WriteString(w, "short")
			return
		}
		block := bytes.Repeat([]byte("e"), 32<<10)
		for {
			if _, err := w.Write(block); err != nil {
				close(cut) // the relay client closed the connection
				return
			}
			w.(http.Flusher).Flush()
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	e.tuned("cut", srv.URL)
	req, err := http.NewRequestWithContext(ctxT(t), "GET", e.node.URL+"/client/cut/endless", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	e.c.Transport.(*http.Transport).CloseIdleConnections()
	select {
	case <-cut:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend connection of the cut answer stayed open")
	}
	e.want(e.do("GET", "/client/cut/next", nil), 200, "short")
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d backend connections, want 2 (the cut one, a new one)", n)
	}
}

// A large body of known length goes from the backend's connection to the
// server's without passing through the tuned client (spliced): it arrives
// whole and in order, the backend connection serves the next request, and
// a body the backend cuts is an error for the user, never a short answer.
func TestTunedClientSplicesLargeBodies(t *testing.T) {
	e := start(t, nil)
	const size = 3<<20 + 12345
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7 % 251)
	}
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		if r.URL.Path == "/cut" {
			w.Write(data[:size/2])
			panic(http.ErrAbortHandler) // the connection closes mid-body
		}
		w.Write(data)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Config.ErrorLog = nil
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	e.tuned("big", srv.URL)
	for i := range 2 {
		r := e.do("GET", "/client/big/data", nil)
		if r.err != nil || r.status != 200 || !bytes.Equal([]byte(r.body), data) {
			t.Fatalf("download %d: %d, %d bytes, %v", i, r.status, len(r.body), r.err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d backend connections for two downloads one after the other, want 1", n)
	}
	if r := e.do("GET", "/client/big/cut", nil); r.err == nil {
		t.Fatalf("a cut body looked complete: %d, %d bytes", r.status, len(r.body))
	}
}

// The tuned client polls and posts on connections it keeps: many
// requests one after another open only a few connections to the server.
func TestTunedClientKeepsServerConnections(t *testing.T) {
	e := start(t, nil)
	// A forwarder in front of the node counts the relay client's
	// connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	nodeAddr := strings.TrimPrefix(e.node.URL, "http://")
	var open sync.Map
	t.Cleanup(func() {
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			up, err := net.Dial("tcp", nodeAddr)
			if err != nil {
				c.Close()
				continue
			}
			open.Store(c, true)
			open.Store(up, true)
			wg.Go(func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() })
			wg.Go(func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite() })
		}
	})
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.URL.Path) })
	e.runClient("keepsrv", be, func(o *gcrclient.Options) {
		*o = gcrclient.Tuned(*o)
		o.RelayURL = "http://" + ln.Addr().String()
	})
	for i := range 40 {
		e.want(e.do("GET", fmt.Sprintf("/client/keepsrv/%d", i), nil), 200, fmt.Sprintf("/%d", i))
	}
	t.Logf("%d connections", conns.Load())
	if n := conns.Load(); n > 12 {
		t.Fatalf("%d connections to the server for 40 requests one after another", n)
	}
}
