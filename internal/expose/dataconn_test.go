package expose_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/expose"
	"github.com/postern/postern/internal/expose/muxconn"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// dataEvents reads postern_expose_data_connections_total{event}.
func dataEvents(t *testing.T, n *servertest.Node, event string) float64 {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "postern_expose_data_connections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "event" && l.GetValue() == event {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// untilDataConnTaken sends GETs to host until one went on a data
// connection (the agent dials its spares once it is ready: the first
// requests may come before them), at most for 10 s, and returns the
// last answer's status and body.
func untilDataConnTaken(t *testing.T, n *servertest.Node, host string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := dataEvents(t, n, "taken")
		resp, body := do(t, n, "GET", host, "/", nil)
		if dataEvents(t, n, "taken") > before {
			return resp.StatusCode, body
		}
		if time.Now().After(deadline) {
			t.Fatalf("no request went on a data connection within 10s (last: %d %q)", resp.StatusCode, body)
		}
	}
}

// TestDataConnsCarryRequests: an agent of this version on a server that
// offers data connections gets its users' requests on them (plain ones,
// with bodies, and websockets, many at once), and they are kept between
// requests like any connection.
func TestDataConnsCarryRequests(t *testing.T) {
	n := startNode(t, nil)
	c, _ := client.New(n.URL)
	exposeWith(t, c, client.ExposeOptions{Name: "data", Local: echoService(t)})
	host := "data." + domain
	if code, body := untilDataConnTaken(t, n, host); code != 200 || body != "GET / " {
		t.Fatalf("GET: %d %q", code, body)
	}
	if n.Metric(t, "postern_expose_data_connections") < 1 {
		t.Fatal("no data connection open")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 32 {
		wg.Go(func() {
			method, body := "GET", ""
			if i%2 == 1 {
				method, body = "POST", strings.Repeat("b", 100<<10)
			}
			resp, got := do(t, n, method, host, "/", strings.NewReader(body))
			if resp.StatusCode != 200 || got != method+" / "+body {
				errs <- errors.New(method + ": " + resp.Status + " " + got[:min(len(got), 40)])
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ws, _, err := wsDial(context.Background(), n, host, "/ws", nil)
	if err != nil {
		t.Fatalf("websocket through a data connection: %v", err)
	}
	defer ws.CloseNow()
	ws.Write(context.Background(), websocket.MessageText, []byte("ping"))
	if _, msg, err := ws.Read(context.Background()); err != nil || string(msg) != "ping" {
		t.Fatalf("websocket echo: %q %v", msg, err)
	}
	// Requests one after another reuse the data connection kept alive
	// (after the first, which may swap an idle stream opened during the
	// burst for a spare).
	do(t, n, "GET", host, "/", nil)
	taken := dataEvents(t, n, "taken")
	for range 10 {
		if resp, _ := do(t, n, "GET", host, "/", nil); resp.StatusCode != 200 {
			t.Fatalf("GET: %s", resp.Status)
		}
	}
	if got := dataEvents(t, n, "taken"); got != taken {
		t.Fatalf("10 requests one after another took %v data connections, want none more", got-taken)
	}
}

// echoService is a local service answering "METHOD PATH BODY", and a
// websocket echo at /ws.
func echoService(t *testing.T) string {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			ws, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer ws.CloseNow()
			for {
				typ, msg, err := ws.Read(r.Context())
				if err != nil || ws.Write(r.Context(), typ, msg) != nil {
					return
				}
			}
		}
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(b))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestDataConnBadGateway: a request on a data connection whose local
// service cannot be reached gets the agent's 502 with its one-line
// reason, at once.
func TestDataConnBadGateway(t *testing.T) {
	n := startNode(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	c, _ := client.New(n.URL)
	exposeWith(t, c, client.ExposeOptions{Name: "gone", Local: "http://" + dead})
	code, body := untilDataConnTaken(t, n, "gone."+domain)
	if code != http.StatusBadGateway || !strings.HasPrefix(body, "postern expose: the local service at "+dead+" cannot be reached: ") || strings.Contains(body, "\n") {
		t.Fatalf("got %d %q, want the agent's 502", code, body)
	}
}

// TestDataConnsNotOffered: a server that offers no data connections (as
// those before them, or with --expose-data-conns -1) keeps every
// request on the session, and an agent that ignores the offer (as those
// before them) too.
func TestDataConnsNotOffered(t *testing.T) {
	n := startNode(t, func(c *node.Config) { c.Expose.DataConns = -1 })
	c, _ := client.New(n.URL)
	exposeWith(t, c, client.ExposeOptions{Name: "old", Local: echoService(t)})
	for range 5 {
		if resp, body := do(t, n, "GET", "old."+domain, "/", nil); resp.StatusCode != 200 || body != "GET / " {
			t.Fatalf("GET: %s %q", resp.Status, body)
		}
	}
	if got := dataEvents(t, n, "accepted"); got != 0 {
		t.Fatalf("%v data connections accepted where none are offered", got)
	}

	n = startNode(t, nil)
	a := dialRawAgent(t, n, "older", func(st *yamux.Stream) {
		br := bufio.NewReader(st)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	for range 3 {
		if resp, body := do(t, n, "GET", "older."+domain, "/", nil); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("GET: %s %q", resp.Status, body)
		}
	}
	if a.count() != 1 || dataEvents(t, n, "accepted") != 0 {
		t.Fatalf("an agent ignoring the offer: %d streams, %v data connections", a.count(), dataEvents(t, n, "accepted"))
	}
}

// agentHandshake connects a native agent at the wire's level and returns its
// websocket and the handshake's answer.
func agentHandshake(t *testing.T, n *servertest.Node, name string) (*websocket.Conn, *http.Response) {
	t.Helper()
	ws, resp, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(n.URL, "http")+expose.AgentPath+"?name="+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return ws, resp
}

// dialData sends a data connection's upgrade with secret and returns the
// connection, the answer and its reader.
func dialData(t *testing.T, n *servertest.Node, secret string, hdr ...string) (net.Conn, *http.Response, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := http.NewRequest("GET", n.URL+expose.DataConnPath, nil)
	req.Header.Set(expose.DataSecretHeader, secret)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", expose.DataUpgrade)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	return conn, resp, br
}

// TestDataConnRefused: a data connection needs the upgrade and a secret
// its session handed out; others get a clear refusal, and a session gets
// no more than the server allows.
func TestDataConnRefused(t *testing.T) {
	n := startNode(t, func(c *node.Config) { c.Expose.DataConns = 1 })
	_, hs := agentHandshake(t, n, "guarded")
	secret := hs.Header.Get(expose.DataSecretHeader)
	if secret == "" || hs.Header.Get(expose.DataMaxHeader) != "1" {
		t.Fatalf("handshake answer offers %q, max %q", secret, hs.Header.Get(expose.DataMaxHeader))
	}
	id, _, _ := strings.Cut(secret, ".")
	for _, tc := range []struct {
		secret string
		hdr    []string
		want   int
	}{
		{"", nil, http.StatusForbidden},
		{id, nil, http.StatusForbidden},
		{id + ".wrong", nil, http.StatusForbidden},
		{secret + "x", nil, http.StatusForbidden},
		{secret, []string{"Upgrade", "websocket"}, http.StatusBadRequest},
		{secret, []string{"Connection", "keep-alive"}, http.StatusBadRequest},
	} {
		_, resp, _ := dialData(t, n, tc.secret, tc.hdr...)
		msg := resp.Header.Get(client.ErrorHeader)
		if resp.StatusCode != tc.want || msg == "" || strings.Contains(msg, "\n") {
			t.Errorf("secret %q %q: %d %q, want %d with a one-line reason", tc.secret, tc.hdr, resp.StatusCode, msg, tc.want)
		}
	}
	if _, resp, _ := dialData(t, n, secret); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("the right secret: %s", resp.Status)
	}
	if _, resp, _ := dialData(t, n, secret); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("one more than the server allows: %s, want 429", resp.Status)
	}
}

// TestDataConnsEndWithTheSession: when an agent's session ends, its data
// connections are closed, and its secret opens no more.
func TestDataConnsEndWithTheSession(t *testing.T) {
	n := startNode(t, nil)
	ws, hs := agentHandshake(t, n, "brief")
	secret := hs.Header.Get(expose.DataSecretHeader)
	conn, resp, br := dialData(t, n, secret)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	ws.CloseNow()
	// The server closes the connection: a read ends before its deadline.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); errors.Is(err, os.ErrDeadlineExceeded) || err == nil {
		t.Fatalf("data connection of an ended session: %v, want it closed", err)
	}
	// The secret was forgotten before its connections were closed.
	if _, resp, _ := dialData(t, n, secret); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("the secret of an ended session: %s, want 403", resp.Status)
	}
}

// TestDataConnCarriesAWireLevelRequest: an agent's data connection,
// once its upgrade is answered, is a spare the next request goes on.
func TestDataConnCarriesAWireLevelRequest(t *testing.T) {
	n := startNode(t, nil)
	ws, hs := agentHandshake(t, n, "wire")
	ws.SetReadLimit(muxconn.ReadLimit())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sess, err := yamux.Server(muxconn.Conn(ctx, ws), muxconn.Config(15*time.Second, 4<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	conn, resp, br := dialData(t, n, hs.Header.Get(expose.DataSecretHeader))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != expose.DataUpgrade {
		t.Fatalf("upgrade: %s %v", resp.Status, resp.Header)
	}
	conn.SetDeadline(time.Time{})
	served := make(chan string, 1)
	go func() {
		req, err := http.ReadRequest(br)
		if err != nil {
			served <- err.Error()
			return
		}
		served <- req.Method + " " + req.Host + " " + req.URL.Path
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndata")
	}()
	// Once the upgrade is answered the connection is the agent's spare:
	// the first request goes on it, not on a stream.
	if resp, body := do(t, n, "GET", "wire."+domain, "/p", nil); resp.StatusCode != 200 || body != "data" {
		t.Fatalf("GET: %s %q", resp.Status, body)
	}
	if got := <-served; got != "GET wire."+domain+" /p" {
		t.Fatalf("the data connection got %q", got)
	}
}
