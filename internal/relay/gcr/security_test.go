package gcr_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/gcr"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
	"github.com/postern/postern/internal/relay/gcr/wire"
)

// announce opens a connection that posts a /server/response announcing
// length bytes, sends none of them, and returns once the server has
// started reading the body (it answers the Expect: 100-continue the moment
// the handler first reads).
func announce(t *testing.T, addr string, length int64) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /server/response HTTP/1.1\r\nHost: relay\r\nContent-Type: application/vnd.google.protobuf\r\n"+
		"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n", length)
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("waiting for 100 Continue: %q %v", line, err)
	}
	conn.SetReadDeadline(time.Time{})
	return conn
}

// TestAnnouncedResponseBodiesDoNotReserveMemory: a /server/response is
// read before it can be authorized (the request id, hence the backend
// name, is inside it), so an anonymous client that announces large bodies
// and sends nothing must not make the server set aside memory for them.
// (The server allocated every declared Content-Length, up to 64 MiB, up
// front: eight such connections held half a GiB.)
func TestAnnouncedResponseBodiesDoNotReserveMemory(t *testing.T) {
	pol, err := auth.Parse([]byte(tokenFile))
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, func(c *node.Config) { c.Policy = pol })
	const conns = 8
	size := gcr.DefaultMaxResponseMessageBytes
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	for range conns {
		announce(t, e.node.Addr, size)
	}
	runtime.ReadMemStats(&ms)
	// At most the reserve is set aside, whatever the number of connections.
	if grown := int64(ms.HeapInuse) - int64(base); grown > gcr.DefaultMaxResponseReserveBytes+16<<20 {
		t.Fatalf("heap grew by %d MiB for %d announced bodies of %d MiB that never came", grown>>20, conns, size>>20)
	}
	// The relay still takes real responses (403 here: no token).
	if r := e.post(&wire.Response{HasID: true, ID: "bot:00000000000000000000000000000000"}); r.status != 403 {
		t.Fatalf("post while bodies are announced: %d %q", r.status, r.body)
	}
}

// TestSlowResponseBodyTimesOut: a /server/response body that does not
// arrive within the inactive request timeout is answered 408 and the
// connection closed, instead of holding the connection for ever (no
// request would survive that long without a chunk anyway).
func TestSlowResponseBodyTimesOut(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Relay.InactiveRequestTimeout = 200 * time.Millisecond })
	conn, err := net.Dial("tcp", e.node.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /server/response HTTP/1.1\r\nHost: relay\r\nContent-Length: 1000\r\n\r\n\x0a\x05")
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 408 || string(body) != "request body not received in time\n" {
		t.Fatalf("slow body: %d %q", res.StatusCode, body)
	}
	// The server closes the connection: nothing more is read from it.
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection not closed after the timeout: %v", err)
	}
	// A body cut short is a clear 400, not a 500.
	conn2, err := net.Dial("tcp", e.node.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	fmt.Fprintf(conn2, "POST /server/response HTTP/1.1\r\nHost: relay\r\nContent-Length: 1000\r\n\r\n\x0a\x05")
	conn2.(*net.TCPConn).CloseWrite()
	conn2.SetReadDeadline(time.Now().Add(20 * time.Second))
	res, err = http.ReadResponse(bufio.NewReader(conn2), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	if res.StatusCode != 400 || string(body) != "request body incomplete\n" {
		t.Fatalf("short body: %d %q", res.StatusCode, body)
	}
}

// TestForgedForwardMarkIsAuthorized: X-Postern-Forwarded marks a request
// one node forwarded to another, and any user can send it. The receiving
// node authorizes a forwarded request as a direct one, so the mark gets
// nobody past the token policy, on either side of the relay, and the
// X-Server-Name fallback is authorized the same way.
func TestForgedForwardMarkIsAuthorized(t *testing.T) {
	pol, err := auth.Parse([]byte(tokenFile))
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, func(c *node.Config) { c.Policy = pol; c.Relay.PollTimeout = 20 * time.Millisecond })
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path=%s auth=%q", r.URL.Path, r.Header.Get("Authorization"))
	})
	e.runClient("bot", be, func(o *gcrclient.Options) { o.Token = "robot-secret-0123456789" })
	user := []string{"Authorization", "Bearer user-secret-0123456789"}
	for _, mark := range []string{"relay", "expose", "x"} {
		fwd := []string{relay.ForwardedHeader, mark}
		for _, r := range []result{
			e.do("GET", "/client/bot/x", nil, fwd...),
			e.do("GET", "/pkg.Svc/Method", nil, append([]string{gcr.ServerNameHeader, "bot"}, fwd...)...),
			e.do("GET", "/server/request?server=bot", nil, fwd...),
			e.do("GET", "/server/request?server=bot", nil, append(user, fwd...)...),
			e.do("GET", "/server/requeststream?id=bot:00000000000000000000000000000000", nil, fwd...),
			e.post(&wire.Response{HasID: true, ID: "bot:00000000000000000000000000000000", HasStatus: true, StatusCode: 200}, fwd...),
		} {
			if r.status != 403 {
				t.Fatalf("%s: %s without a token: %d %q, want 403", relay.ForwardedHeader, mark, r.status, r.body)
			}
		}
	}
	// With the token, the marked request is served, and neither the token
	// nor the mark reaches the backend.
	e.want(e.do("GET", "/client/bot/x", nil, append(user, relay.ForwardedHeader, "relay")...), 200, `path=/x auth=""`)
	e.want(e.do("GET", "/pkg.Svc/Method", nil, append(user, gcr.ServerNameHeader, "bot")...), 200, `path=/pkg.Svc/Method auth=""`)
	// X-Server-Name never takes a path another capability owns, nor the
	// status page (which needs an ops grant this token lacks).
	for _, p := range []string{"/", "/metrics"} {
		if r := e.do("GET", p, nil, append(user, gcr.ServerNameHeader, "bot")...); r.status != 403 || strings.Contains(r.body, "path=") {
			t.Fatalf("%s with X-Server-Name: %d %.60q, want postern's own 403", p, r.status, r.body)
		}
	}
}
