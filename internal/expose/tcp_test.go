package expose_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// freePort returns a 127.0.0.1 port the kernel just handed out and that
// is free again: the range of public TCP ports of a test node.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// tcpNode starts a node whose raw TCP ports are the one port returned.
func tcpNode(t *testing.T, tweak func(c *node.Config)) (*servertest.Node, int) {
	t.Helper()
	port := freePort(t)
	cfg := servertest.Config()
	cfg.Expose.TCPPorts = strconv.Itoa(port)
	if tweak != nil {
		tweak(&cfg)
	}
	return servertest.Start(t, cfg), port
}

// echoServer is a local TCP service that writes back what it reads and
// half-closes when its reader does.
func echoServer(t *testing.T) string {
	t.Helper()
	return tcpServer(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
}

// tcpServer serves each connection with serve, closing it after; the
// server and its connections end with the test.
func tcpServer(t testing.TB, serve func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				serve(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "tcp://" + ln.Addr().String()
}

// tcpAgent runs client.Expose for a tcp:// local service until the test
// ends (or stop is called) and returns the public URL once it is ready.
type tcpAgent struct {
	url  string
	stop func() error
}

func startTCPAgent(t testing.TB, c *client.Client, o client.ExposeOptions) tcpAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	o.MinBackoff, o.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	o.OnReady = func(u string) {
		select {
		case ready <- u:
		default:
		}
	}
	go func() { done <- c.Expose(ctx, o) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Expose returned %v", err)
		}
	})
	select {
	case u := <-ready:
		return tcpAgent{url: u, stop: stop}
	case err := <-done:
		t.Fatalf("Expose ended: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent not ready within 20s")
	}
	return tcpAgent{}
}

// dialPublic connects to a public tcp:// URL.
func dialPublic(t *testing.T, public string) *net.TCPConn {
	t.Helper()
	u, err := url.Parse(public)
	if err != nil || u.Scheme != "tcp" {
		t.Fatalf("public URL %q", public)
	}
	c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn)
}

func newClient(t *testing.T, n *servertest.Node, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(n.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestExposeTCPEcho: an echo service published with tcp:// answers on the
// public port the agent reports, for several users at once, with more
// bytes each way than the yamux window holds; the metrics count them.
func TestExposeTCPEcho(t *testing.T) {
	n, port := tcpNode(t, nil)
	a := startTCPAgent(t, newClient(t, n), client.ExposeOptions{Name: "echo", Local: echoServer(t)})
	if want := fmt.Sprintf("tcp://127.0.0.1:%d", port); a.url != want {
		t.Fatalf("public URL %q, want %q", a.url, want)
	}
	const size = 6 << 20 // more than the 4 MiB window
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			c := dialPublic(t, a.url)
			data := make([]byte, size)
			rand.Read(data)
			sent := make(chan error, 1)
			go func() {
				_, err := c.Write(data)
				c.CloseWrite()
				sent <- err
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("user %d: %d of %d bytes back, %v", i, len(got), size, err)
			}
			if err := <-sent; err != nil {
				t.Errorf("user %d: send: %v", i, err)
			}
		})
	}
	wg.Wait()
	waitMetric(t, n, "postern_expose_connections", 0)
	if got := n.Metric(t, "postern_expose_bytes_total"); got != 2*3*size {
		t.Errorf("postern_expose_bytes_total %v, want %d", got, 2*3*size)
	}
	if got := n.Metric(t, "postern_expose_connections_total"); got != 3 {
		t.Errorf("postern_expose_connections_total %v, want 3", got)
	}
	if got := n.Metric(t, "postern_expose_tcp_ports"); got != 1 {
		t.Errorf("postern_expose_tcp_ports %v, want 1", got)
	}
}

// waitMetric waits for metric name to read want, for 20 s at most (a
// readiness signal: the node's own figures).
func waitMetric(t *testing.T, n *servertest.Node, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for n.Metric(t, name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s is %v, want %v", name, n.Metric(t, name), want)
		}
		time.Sleep(5 * time.Millisecond) // polling a readiness signal, with a deadline
	}
}

// TestExposeTCPHalfClose: each side's end of file reaches the other while
// the other direction goes on, both ways round.
func TestExposeTCPHalfClose(t *testing.T) {
	n, _ := tcpNode(t, nil)
	c := newClient(t, n)
	// The service reads to the end, then answers with what it counted.
	counter := startTCPAgent(t, c, client.ExposeOptions{Name: "counter", Local: tcpServer(t, func(c *net.TCPConn) {
		got, _ := io.ReadAll(c)
		fmt.Fprintf(c, "read %d bytes", len(got))
	})})
	u := dialPublic(t, counter.url)
	io.WriteString(u, "hello, ")
	io.WriteString(u, "world")
	if err := u.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(u); err != nil || string(got) != "read 12 bytes" {
		t.Fatalf("after the user's half-close: %q, %v", got, err)
	}

	// The service speaks first and half-closes; the user still sends, and
	// the service still reads it.
	heard := make(chan string, 1)
	n2, _ := tcpNode(t, nil)
	talker := startTCPAgent(t, newClient(t, n2), client.ExposeOptions{Name: "talker", Local: tcpServer(t, func(c *net.TCPConn) {
		io.WriteString(c, "banner")
		c.CloseWrite()
		got, _ := io.ReadAll(c)
		heard <- string(got)
	})})
	u = dialPublic(t, talker.url)
	if got, err := io.ReadAll(u); err != nil || string(got) != "banner" {
		t.Fatalf("before the service's half-close: %q, %v", got, err)
	}
	io.WriteString(u, "still here")
	u.CloseWrite()
	select {
	case got := <-heard:
		if got != "still here" {
			t.Fatalf("the service read %q after its own half-close", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the service never read the user's end of file")
	}
}

// cutter is a TCP proxy to a node whose connections the test cuts at
// once, as a killed agent's process would: the server sees its agent's
// connection end without a goodbye.
type cutter struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := &cutter{ln: ln}
	x.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			x.mu.Lock()
			x.conns = append(x.conns, c, s)
			x.mu.Unlock()
			x.wg.Go(func() { io.Copy(s, c); s.Close() })
			x.wg.Go(func() { io.Copy(c, s); c.Close() })
		}
	})
	t.Cleanup(x.cut)
	return x
}

func (x *cutter) url() string { return "http://" + x.ln.Addr().String() }

// cut closes the proxy and every connection through it, abruptly.
func (x *cutter) cut() {
	x.ln.Close()
	x.mu.Lock()
	for _, c := range x.conns {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	x.mu.Unlock()
	x.wg.Wait()
}

// TestExposeTCPKilledAgentFreesPort: when an agent's connection dies, its
// users' connections are reset, the port refuses connections, and the
// next agent (another name) gets the port.
func TestExposeTCPKilledAgentFreesPort(t *testing.T) {
	n, port := tcpNode(t, nil)
	x := newCutter(t, n.Addr)
	viaCutter, err := client.New(x.url())
	if err != nil {
		t.Fatal(err)
	}
	first := startTCPAgent(t, viaCutter, client.ExposeOptions{Name: "first", Local: echoServer(t)})
	u := dialPublic(t, first.url)
	io.WriteString(u, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(u, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}

	x.cut() // the agent is gone, as if killed
	if _, err := io.ReadAll(u); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a user connected through the killed agent read %v, want a reset", err)
	}
	waitMetric(t, n, "postern_expose_tcp_ports", 0)
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		c.Close()
		t.Fatal("the port of a killed agent still takes connections")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dialing the port of a killed agent: %v, want connection refused", err)
	}
	first.stop()

	next := startTCPAgent(t, newClient(t, n), client.ExposeOptions{Name: "next", Local: echoServer(t)})
	if want := fmt.Sprintf("tcp://127.0.0.1:%d", port); next.url != want {
		t.Fatalf("the next agent got %q, want the freed port %s", next.url, want)
	}
	u = dialPublic(t, next.url)
	io.WriteString(u, "pong")
	u.CloseWrite()
	if got, err := io.ReadAll(u); err != nil || string(got) != "pong" {
		t.Fatalf("echo through the next agent: %q %v", got, err)
	}
}

// handshake sends a native agent's handshake as a plain GET (the server
// answers a refusal before any upgrade) and returns status and message.
func handshake(t *testing.T, n *servertest.Node, query, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", n.URL+"/agent?"+query, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestExposeTCPRangeExhausted: with every port of the range held, another
// name is refused 503 with a message saying so, and its agent keeps
// retrying (logging why) until a port frees up.
func TestExposeTCPRangeExhausted(t *testing.T) {
	n, port := tcpNode(t, nil)
	c := newClient(t, n)
	holder := startTCPAgent(t, c, client.ExposeOptions{Name: "holder", Local: echoServer(t)})
	code, msg := handshake(t, n, "name=other&proto=tcp", "")
	want := fmt.Sprintf("no free TCP port: all of port %d are taken", port)
	if code != http.StatusServiceUnavailable || !strings.Contains(msg, want) {
		t.Fatalf("exhausted range: %d %q, want 503 %q", code, msg, want)
	}
	// The same name joins its port (two agents share a name's work).
	second := startTCPAgent(t, c, client.ExposeOptions{Name: "holder", Local: echoServer(t)})
	if second.url != holder.url {
		t.Fatalf("a second agent of the name got %q, its first %q", second.url, holder.url)
	}

	logs := &servertest.Logs{}
	waiting := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Expose(ctx, client.ExposeOptions{
			Name: "waiter", Local: echoServer(t), MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
			Logger:  slog.New(slog.NewTextHandler(logs, nil)),
			OnReady: func(u string) { waiting <- u },
		})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "503 no free TCP port") {
		if time.Now().After(deadline) {
			t.Fatalf("the waiting agent never logged the refusal:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond) // polling the agent's log, with a deadline
	}
	holder.stop()
	second.stop()
	select {
	case u := <-waiting:
		if u != holder.url {
			t.Fatalf("the waiting agent got %q, want the freed %q", u, holder.url)
		}
	case err := <-done:
		t.Fatalf("the waiting agent gave up: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the waiting agent never got the freed port")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestExposeTCPGrants: under a token policy a raw TCP agent needs serve
// on /tcp/PORT besides its name; a fixed port needs that port's grant.
func TestExposeTCPGrants(t *testing.T) {
	lo := freePort(t)
	hi := freePort(t)
	if hi < lo {
		lo, hi = hi, lo
	}
	policy, err := auth.Parse(fmt.Appendf(nil, `
[[token]]
name = "http-only"
secret = "http-only-secret-0123"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/*"]

[[token]]
name = "one-port"
secret = "one-port-secret-01234"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/db", "/tcp/%d"]
`, hi))
	if err != nil {
		t.Fatal(err)
	}
	cfg := servertest.Config()
	cfg.Expose.TCPPorts = fmt.Sprintf("%d-%d", lo, hi)
	cfg.Policy = policy
	n := servertest.Start(t, cfg)

	for _, tc := range []struct {
		query, token string
		code         int
		msg          string
	}{
		{"name=db&proto=tcp", "http-only-secret-0123", 403, "not granted serve on /tcp/PORT for any port of"},
		{fmt.Sprintf("name=db&proto=tcp&port=%d", lo), "one-port-secret-01234", 403, fmt.Sprintf("not granted serve on /tcp/%d", lo)},
		{fmt.Sprintf("name=db&proto=tcp&port=%d", hi+1), "one-port-secret-01234", 400, "is outside this server's TCP ports"},
		{"name=db&proto=tcp&port=0x10", "one-port-secret-01234", 400, "not a port number"},
		{"name=db&proto=udp", "one-port-secret-01234", 400, "want http, tcp or tls"},
		{"name=db&proto=tcp", "", 401, "agent needs a token granted serve on /expose/db"},
	} {
		if code, msg := handshake(t, n, tc.query, tc.token); code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s with %q: %d %q, want %d %q", tc.query, tc.token, code, msg, tc.code, tc.msg)
		}
	}

	// The client gives up on a refused grant with the server's reason.
	refused := newClient(t, n, client.WithToken("http-only-secret-0123"))
	err = refused.Expose(context.Background(), client.ExposeOptions{Name: "db", Local: echoServer(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	var perr *client.Error
	if !errors.As(err, &perr) || perr.StatusCode != 403 || !strings.Contains(perr.Message, "/tcp/PORT") {
		t.Fatalf("Expose with a token not granted a port: %v", err)
	}

	// Granted one port: asked for or not, the agent gets it.
	granted := newClient(t, n, client.WithToken("one-port-secret-01234"))
	a := startTCPAgent(t, granted, client.ExposeOptions{Name: "db", Local: echoServer(t), Port: hi})
	if want := fmt.Sprintf("tcp://127.0.0.1:%d", hi); a.url != want {
		t.Fatalf("fixed port: %q, want %q", a.url, want)
	}
	u := dialPublic(t, a.url)
	io.WriteString(u, "granted")
	u.CloseWrite()
	if got, err := io.ReadAll(u); err != nil || string(got) != "granted" {
		t.Fatalf("echo: %q %v", got, err)
	}
}

// TestExposeTCPFixedPortConflicts: a port held by another name, or by
// another program, is refused 409; a server without TCP ports refuses
// tcp agents 400.
func TestExposeTCPFixedPortConflicts(t *testing.T) {
	n, port := tcpNode(t, nil)
	startTCPAgent(t, newClient(t, n), client.ExposeOptions{Name: "first", Local: echoServer(t), Port: port})
	if code, msg := handshake(t, n, fmt.Sprintf("name=second&proto=tcp&port=%d", port), ""); code != 409 || !strings.Contains(msg, `is held by agent "first"`) {
		t.Fatalf("held port: %d %q", code, msg)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bp := busy.Addr().(*net.TCPAddr).Port
	m, _ := tcpNode(t, func(c *node.Config) { c.Expose.TCPPorts = strconv.Itoa(bp) })
	if code, msg := handshake(t, m, fmt.Sprintf("name=x&proto=tcp&port=%d", bp), ""); code != 409 || !strings.Contains(msg, "in use by another program") {
		t.Fatalf("port of another program: %d %q", code, msg)
	}
	if code, msg := handshake(t, m, "name=x&proto=tcp", ""); code != 503 || !strings.Contains(msg, "no free TCP port") {
		t.Fatalf("range taken by another program: %d %q", code, msg)
	}

	plain := servertest.Start(t, servertest.Config())
	if code, msg := handshake(t, plain, "name=x&proto=tcp", ""); code != 400 || !strings.Contains(msg, "without --expose-tcp-ports") {
		t.Fatalf("no TCP ports: %d %q", code, msg)
	}
	err = newClient(t, plain).Expose(context.Background(), client.ExposeOptions{Name: "x", Local: "tcp://127.0.0.1:1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	var perr *client.Error
	if !errors.As(err, &perr) || perr.StatusCode != 400 {
		t.Fatalf("Expose tcp:// to a server without TCP ports: %v", err)
	}
}

// TestExposeTCPShutdown: a node shutting down resets the users' raw
// connections and closes its ports; nothing hangs.
func TestExposeTCPShutdown(t *testing.T) {
	cfg := servertest.Config()
	port := freePort(t)
	cfg.Expose.TCPPorts = strconv.Itoa(port)
	srv, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	c, err := client.New("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := startTCPAgent(t, c, client.ExposeOptions{Name: "busy", Local: echoServer(t)})
	u := dialPublic(t, a.url)
	io.WriteString(u, "x")
	io.ReadFull(u, make([]byte, 1))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(u); err == nil {
		t.Fatal("a raw connection ended with a clean end of file at shutdown, want a reset")
	}
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		c.Close()
		t.Fatal("the port still takes connections after shutdown")
	}
	a.stop()
}

// TestExposeTCPPortComesBack: a name that comes back gets the port it
// had when that is free, and a port just freed is not the next one handed
// to another name.
func TestExposeTCPPortComesBack(t *testing.T) {
	lo, hi := freePort(t), freePort(t)
	if hi < lo {
		lo, hi = hi, lo
	}
	n, _ := tcpNode(t, func(c *node.Config) { c.Expose.TCPPorts = fmt.Sprintf("%d-%d", lo, hi) })
	c := newClient(t, n)
	first := startTCPAgent(t, c, client.ExposeOptions{Name: "a", Local: echoServer(t)})
	first.stop()
	waitMetric(t, n, "postern_expose_tcp_ports", 0)
	other := startTCPAgent(t, c, client.ExposeOptions{Name: "b", Local: echoServer(t)})
	if other.url == first.url {
		t.Fatalf("another name got the port just freed, %s", other.url)
	}
	again := startTCPAgent(t, c, client.ExposeOptions{Name: "a", Local: echoServer(t)})
	if again.url != first.url {
		t.Fatalf("name a came back to %s, had %s", again.url, first.url)
	}
}
