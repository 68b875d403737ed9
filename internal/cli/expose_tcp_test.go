package cli_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/node"
)

// tcpEcho is a local TCP echo service that half-closes when its reader
// does; it stops with the test.
func tcpEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// echoVia sends msg to addr, half-closes, and returns what came back.
func echoVia(t *testing.T, addr, msg string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, msg)
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestExposeTCPCommand: `postern expose tcp://` prints its public port as
// "Forwarding tcp://HOST:PORT -> tcp://...", carries a session to the
// local service, and once killed (-9) frees the port: connections are
// refused until the next agent takes it with --public-port.
func TestExposeTCPCommand(t *testing.T) {
	port := freeTCPPort(t)
	n := startNode(t, func(c *node.Config) { c.Expose.TCPPorts = strconv.Itoa(port) })
	local := "tcp://" + tcpEcho(t)
	agent := startBin(t, nil, "expose", "--server", n.URL, "--name", "ssh", local)
	public := fmt.Sprintf("127.0.0.1:%d", port)
	if l := agent.line(); l != "Forwarding tcp://"+public+" -> "+local {
		t.Fatalf("printed %q", l)
	}
	if got, err := echoVia(t, public, "SSH-2.0-test"); err != nil || got != "SSH-2.0-test" {
		t.Fatalf("echo: %q %v", got, err)
	}

	held, err := net.Dial("tcp", public)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	io.WriteString(held, "x")
	if _, err := io.ReadFull(held, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	agent.cmd.Process.Kill()
	<-agent.exited
	held.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadAll(held); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a connection through the killed agent read %v, want a reset", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := echoVia(t, public, "?")
		if errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed agent's port still answers: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling the port's state, with a deadline
	}

	next := startBin(t, nil, "expose", "--server", n.URL, "--name", "ssh2", "--public-port", strconv.Itoa(port), local)
	if l := next.line(); l != "Forwarding tcp://"+public+" -> "+local {
		t.Fatalf("the next agent printed %q", l)
	}
	if got, err := echoVia(t, public, "again"); err != nil || got != "again" {
		t.Fatalf("echo through the next agent: %q %v", got, err)
	}
	if code, _ := next.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit on SIGTERM: %d; stderr %s", code, next.stderr)
	}
}

// TestExposeTCPCommandErrors: a tcp:// URL without a port is a usage
// error; a port grant refused and a range exhausted say so in one line.
func TestExposeTCPCommandErrors(t *testing.T) {
	port := freeTCPPort(t)
	policy, err := auth.Parse([]byte(`
[[token]]
name = "agent"
secret = "agent-secret-0123456789"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	n := startNode(t, func(c *node.Config) { c.Expose.TCPPorts = strconv.Itoa(port); c.Policy = policy })
	if r := runBin(t, nil, "", "expose", "--server", n.URL, "tcp://127.0.0.1"); r.code != cli.ExitUsage || !strings.Contains(r.stderr, "want http://host:port, https://host:port, tcp://host:port or tls://host:port") {
		t.Errorf("no port: exit %d, %q", r.code, r.stderr)
	}
	r := runBin(t, nil, "", "expose", "--server", n.URL, "--token", "agent-secret-0123456789", "--name", "db", "tcp://"+tcpEcho(t))
	want := fmt.Sprintf("postern expose: 403 not granted serve on /tcp/PORT for any port of port %d", port)
	if r.code != cli.ExitDenied || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("refused grant: exit %d, %q; want %d and %q", r.code, r.stderr, cli.ExitDenied, want)
	}
}
