package node_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// rawGet sends one keep-alive GET on conn and reads the answer.
func rawGet(t *testing.T, conn net.Conn, br *bufio.Reader, path string) (int, string) {
	t.Helper()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res.StatusCode, string(body)
}

// TestMaxConnections: beyond the cap a connection is answered 503 at once
// (not left hanging in the backlog), except that OpsConnections more are
// taken for the node's own /healthz, /readyz and /metrics, and closed after
// one answer.
func TestMaxConnections(t *testing.T) {
	cfg := servertest.Config()
	cfg.MaxConnections = 2
	cfg.MaxConnectionsPerAddr = -1 // the total cap alone
	n := servertest.Start(t, cfg)
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", n.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	var conns []net.Conn
	for range 2 {
		c, br := dial()
		if code, _ := rawGet(t, c, br, "/inbox"); code != 200 {
			t.Fatalf("connection within the cap: %d", code)
		}
		conns = append(conns, c)
	}
	// Over the cap: ops endpoints only.
	for i := range node.OpsConnections {
		c, br := dial()
		path := []string{"/healthz", "/readyz", "/metrics"}[i%3]
		if code, _ := rawGet(t, c, br, path); code != 200 {
			t.Fatalf("%s over the cap: %d", path, code)
		}
		// Closed after the answer, so the place is free again.
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("ops connection over the cap not closed: %v", err)
		}
	}
	c, br := dial()
	if code, body := rawGet(t, c, br, "/inbox"); code != 503 || body != "too many connections" {
		t.Fatalf("request over the cap: %d %q", code, body)
	}
	// Beyond the ops reserve too, every connection is answered 503 at once.
	var held []net.Conn
	for range node.OpsConnections {
		c, _ := dial()
		held = append(held, c)
	}
	// (The kernel hands connections over in order, so these are taken
	// before the next.)
	c, br = dial()
	if code, body := rawGet(t, c, br, "/healthz"); code != 503 || body != "too many connections" {
		t.Fatalf("connection over the cap and the reserve: %d %q", code, body)
	}
	for _, c := range held {
		c.Close()
	}
	// When one closes, its place is free again (the server notices the
	// close on its own time: retry, with a deadline).
	conns[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", n.Addr)
		if err != nil {
			t.Fatal(err)
		}
		code, _ := rawGet(t, c, bufio.NewReader(c), "/inbox")
		c.Close()
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed connection's place never came back: %d", code)
		}
	}
}

// needFiles raises the test process's open-file soft limit to its hard
// limit when n descriptors are needed, and skips when even that is too low.
func needFiles(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("cannot read the open-file limit: %v", err)
	}
	if uint64(lim.Cur) >= n {
		return
	}
	if uint64(lim.Max) < n {
		t.Skipf("the open-file hard limit is %d, below the %d descriptors this test needs (raise it with ulimit -Hn)", lim.Max, n)
	}
	old := lim
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("cannot raise the open-file limit to %d: %v", lim.Max, err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// TestOneAddressCannotCrowdOutOthers: thousands of websockets from one
// address (127.0.0.2) get that address's share of the node and no more,
// while a client on 127.0.0.1 is served as usual. Before the per-address
// cap one address could hold every connection the node took: with
// --max-connections it got all of them and everyone else got 503; without
// it the node ran out of file descriptors and new requests hung.
func TestOneAddressCannotCrowdOutOthers(t *testing.T) {
	// More than one address may hold, and a node cap between the two: the
	// cap per address, not the node's, is what refuses. Smaller than the
	// defaults (DefaultMaxConnectionsPerAddr, TestDerivedCaps covers how those
	// are derived) so that the race detector on a busy 2-core machine dials
	// them all in time.
	const perAddr, attempts = 600, 900
	needFiles(t, 3*attempts)
	cfg := servertest.Config()
	cfg.MaxConnectionsPerAddr = perAddr
	cfg.MaxConnections = attempts - 100 // fewer than one address tries to hold
	n := servertest.Start(t, cfg)
	ws := "ws" + strings.TrimPrefix(n.URL, "http")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	statuses := servertest.HoldWebsockets(ctx, t, n.URL, "127.0.0.2", attempts)
	if statuses[101] != perAddr || statuses[429] != attempts-perAddr {
		t.Fatalf("websockets from 127.0.0.2: %v, want %d held and the rest refused 429", statuses, perAddr)
	}

	// 127.0.0.1 is served: a subscriber gets what another client publishes.
	local := servertest.ClientFrom(t, "127.0.0.1")
	sub, _, err := websocket.Dial(ctx, ws+"/c/news", &websocket.DialOptions{HTTPClient: local})
	if err != nil {
		t.Fatalf("subscriber on 127.0.0.1: %v", err)
	}
	defer sub.CloseNow()
	n.WaitForSubscribers(t, "/news", 1)
	resp, err := local.Post(n.URL+"/c/news", "text/plain", strings.NewReader("still served"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish from 127.0.0.1: %v %v", resp, err)
	}
	resp.Body.Close()
	if _, msg, err := sub.Read(ctx); err != nil || string(msg) != "still served" {
		t.Fatalf("subscriber on 127.0.0.1 got %q %v", msg, err)
	}
	if got := n.Metric(t, "postern_connections_refused_total"); got != float64(attempts-perAddr) {
		t.Fatalf("postern_connections_refused_total = %v", got)
	}
}

// TestPerAddrCapBehindTrustedProxies: connections from a trusted proxy
// are not capped per address (they carry many clients); the requests they
// carry are, per client as X-Forwarded-For names it, while in progress,
// and a websocket until it closes.
func TestPerAddrCapBehindTrustedProxies(t *testing.T) {
	cfg := servertest.Config()
	cfg.MaxConnectionsPerAddr = 2
	cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	n := servertest.Start(t, cfg)
	ws := "ws" + strings.TrimPrefix(n.URL, "http")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	proxy := servertest.ClientFrom(t, "127.0.0.1")
	as := func(client string) http.Header { return http.Header{"X-Forwarded-For": {client}} }
	dial := func(client string) (*websocket.Conn, int) {
		t.Helper()
		c, resp, err := websocket.Dial(ctx, ws+"/c/room", &websocket.DialOptions{HTTPClient: proxy, HTTPHeader: as(client)})
		if err != nil {
			if resp == nil {
				t.Fatalf("dial as %s: %v", client, err)
			}
			return nil, resp.StatusCode
		}
		t.Cleanup(func() { c.CloseNow() })
		return c, 101
	}
	// The proxy itself holds more connections than the cap.
	var first *websocket.Conn
	for i := range 2 {
		c, code := dial("203.0.113.5")
		if code != 101 {
			t.Fatalf("websocket %d of client A: %d", i+1, code)
		}
		if i == 0 {
			first = c
		}
	}
	if _, code := dial("203.0.113.5"); code != 429 {
		t.Fatalf("third websocket of client A: %d, want 429", code)
	}
	for i := range 2 {
		if _, code := dial("203.0.113.6"); code != 101 {
			t.Fatalf("websocket %d of client B: %d", i+1, code)
		}
	}
	// A plain request of client A is counted while it runs: refused now.
	req, _ := http.NewRequest("GET", n.URL+"/inbox", nil)
	req.Header = as("203.0.113.5")
	if resp, err := proxy.Do(req); err != nil || resp.StatusCode != 429 {
		t.Fatalf("request of client A with two websockets open: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// Closing a websocket gives its place back (once the server has seen
	// the close: retried, with a deadline).
	first.Close(websocket.StatusNormalClosure, "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, code := dial("203.0.113.5")
		if code == 101 {
			c.CloseNow()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed websocket's place never came back: %d", code)
		}
	}
}
