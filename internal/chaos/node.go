package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Node is a `postern serve` process that a round may kill and start again,
// on the same address and with the same flags (its data directory, for
// the file engine).
type Node struct {
	// URL is the node's base URL, the same across restarts.
	URL string

	bin  string
	args []string
	addr string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	logs   []string // the last lines of its log
}

// startTimeout bounds how long a node may take to listen.
const startTimeout = 30 * time.Second

// listenRE matches the banner's first line ("postern VERSION listening on
// URL ..."), written once the node is ready.
var listenRE = regexp.MustCompile(`^postern (?:\S+ )?listening on https?://\S+`)

// StartNode runs `bin serve --listen 127.0.0.1:<a free port> args...`
// and returns once it listens.
func StartNode(bin string, args ...string) (*Node, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	n := &Node{bin: bin, args: args, addr: addr, URL: "http://" + addr}
	if err := n.start(); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *Node) start() error {
	cmd := exec.Command(n.bin, append([]string{"serve", "--listen", n.addr}, n.args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		var once sync.Once
		for sc.Scan() {
			n.logLine(sc.Text())
			if listenRE.MatchString(sc.Text()) {
				once.Do(func() { close(listening) })
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
		close(exited)
	}()
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case <-listening:
	case <-exited:
		return fmt.Errorf("postern serve exited at start: %s", n.Log())
	case <-t.C:
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("postern serve did not listen within %v: %s", startTimeout, n.Log())
	}
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	return nil
}

func (n *Node) logLine(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.logs = append(n.logs, s)
	if len(n.logs) > 200 {
		n.logs = n.logs[len(n.logs)-100:]
	}
}

// Log returns the last lines the node logged.
func (n *Node) Log() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.logs, "\n")
}

// signal sends sig and waits for the process to exit.
func (n *Node) signal(sig syscall.Signal) error {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return errors.New("postern serve is not running")
	}
	cmd.Process.Signal(sig)
	<-exited
	return nil
}

// Kill kills the node as kill -9 does.
func (n *Node) Kill() error { return n.signal(syscall.SIGKILL) }

// Stop stops the node gracefully (SIGTERM).
func (n *Node) Stop() error { return n.signal(syscall.SIGTERM) }

// Restart starts a killed or stopped node again.
func (n *Node) Restart() error { return n.start() }
