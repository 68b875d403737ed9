package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/postern/postern/internal/servertest"
)

// rawGet sends one keep-alive GET on conn and reads the answer.
func rawGet(t *testing.T, conn net.Conn, br *bufio.Reader, path string) (int, string) {
	t.Helper()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res.StatusCode, string(body)
}

func TestMaxConnections(t *testing.T) {
	cfg := servertest.Config()
	cfg.MaxConnections = 2
	n := servertest.Start(t, cfg)
	var conns []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", n.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if code, _ := rawGet(t, c, bufio.NewReader(c), "/healthz"); code != 200 {
			t.Fatalf("connection within the cap: %d", code)
		}
		conns = append(conns, c)
	}
	// A third is answered at once, not left hanging in the backlog.
	c3, err := net.Dial("tcp", n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if code, body := rawGet(t, c3, bufio.NewReader(c3), "/healthz"); code != 503 || body != "too many connections" {
		t.Fatalf("connection over the cap: %d %q", code, body)
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
		code, _ := rawGet(t, c, bufio.NewReader(c), "/healthz")
		c.Close()
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed connection's place never came back: %d", code)
		}
	}
}
