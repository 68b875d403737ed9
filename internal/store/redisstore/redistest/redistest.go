// Package redistest starts private redis-server processes for tests: on a
// kernel-chosen 127.0.0.1 port, with a temporary directory, stopped when the
// test (or the test binary) ends.
//
// Tests that share one server per test package install it in TestMain and
// take a fresh key prefix per test from URL:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }
//
//	cfg.Store = redistest.URL(t) // redis://127.0.0.1:<port>/0?prefix=t7:
//
// When redis-server is not installed the tests that need it are skipped
// with a clear message, except under CI=true, where that is a failure.
package redistest

import (
	"bufio"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Program is the redis-server binary looked up on PATH.
const Program = "redis-server"

// StartTimeout bounds how long a server may take to accept connections.
const StartTimeout = 15 * time.Second

// Options configure a server.
type Options struct {
	// AppendOnly turns on the append-only file.
	AppendOnly bool
	// AppendFsync is "always", "everysec" or "no" (redis' default everysec).
	AppendFsync string
	// Save is the RDB snapshot schedule ("" turns snapshots off).
	Save string
	// TLS serves only TLS, with a certificate for 127.0.0.1 from a
	// throwaway CA (see Server.TLSConfig); URLs are then rediss://.
	TLS bool
	// Cluster runs the server in cluster mode as a one-node Redis Cluster
	// that serves every slot: commands and scripts whose keys span slots
	// fail with CROSSSLOT there, as on a real Cluster.
	Cluster bool
}

// Server is a running (or stopped) private redis-server.
type Server struct {
	// Addr is "127.0.0.1:<port>".
	Addr string
	// Dir is the server's working directory (RDB and AOF files).
	Dir  string
	opts Options

	caPool *x509.CertPool // with Options.TLS

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	logTail *tail
}

var prefixSeq atomic.Int64

// Need skips t when redis-server is not installed, or fails it under
// CI=true.
func Need(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath(Program); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed, and CI=true requires the Redis tests to run (install the redis-server package)", Program)
		}
		t.Skipf("%s is not installed: skipping the Redis tests (install the redis-server package to run them)", Program)
	}
}

// Start starts a private server for t, stopped by t.Cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	Need(t)
	s, err := start(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.stop(syscall.SIGKILL) })
	return s
}

// Launch starts a server with its files in dir, for programs that are not
// tests (the load harness). Close stops it.
func Launch(dir string, opts Options) (*Server, error) {
	if _, err := exec.LookPath(Program); err != nil {
		return nil, fmt.Errorf("%s is not installed", Program)
	}
	return start(dir, opts)
}

// PID is the running server's process id (0 when stopped), for harnesses
// that measure its CPU time.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Close kills the server and waits for it to exit.
func (s *Server) Close() { s.stop(syscall.SIGKILL) }

func start(dir string, opts Options) (*Server, error) {
	var lastErr error
	for range 3 { // a free port may be taken between probe and bind
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Dir: dir, opts: opts}
		if lastErr = s.launch(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// launch starts the process on s.Addr and waits until it accepts
// connections.
func (s *Server) launch() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{
		"--port", port, "--bind", "127.0.0.1", "--dir", s.Dir,
		"--save", s.opts.Save, "--daemonize", "no", "--logfile", "",
		"--loglevel", "notice", "--databases", "16",
	}
	if s.opts.AppendOnly {
		fsync := s.opts.AppendFsync
		if fsync == "" {
			fsync = "everysec"
		}
		args = append(args, "--appendonly", "yes", "--appendfsync", fsync)
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.opts.Cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes-"+port+".conf")
	}
	if s.opts.TLS {
		cert, key, ca, pool, err := tlsFiles(s.Dir)
		if err != nil {
			return err
		}
		s.caPool = pool
		args[1] = "0" // no plain port
		args = append(args, "--tls-port", port, "--tls-cert-file", cert, "--tls-key-file", key,
			"--tls-ca-cert-file", ca, "--tls-auth-clients", "no")
	}
	cmd := exec.Command(Program, args...)
	cmd.Dir = s.Dir
	setDeathSignal(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", Program, err)
	}
	ready := make(chan struct{})
	exited := make(chan struct{})
	lt := &tail{}
	go func() {
		sc := bufio.NewScanner(out)
		var once sync.Once
		for sc.Scan() {
			line := sc.Text()
			lt.add(line)
			if strings.Contains(line, "Ready to accept connections") {
				once.Do(func() { close(ready) })
			}
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
		close(exited)
	}()
	t := time.NewTimer(StartTimeout)
	defer t.Stop()
	select {
	case <-ready:
	case <-exited:
		return fmt.Errorf("%s exited at start: %s", Program, lt.String())
	case <-t.C:
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("%s did not get ready within %v: %s", Program, StartTimeout, lt.String())
	}
	s.mu.Lock()
	s.cmd, s.exited, s.logTail = cmd, exited, lt
	s.mu.Unlock()
	if s.opts.Cluster {
		if err := s.serveAllSlots(); err != nil {
			s.stop(syscall.SIGKILL)
			return err
		}
	}
	return nil
}

// serveAllSlots gives the one cluster node every slot and waits until the
// cluster reports itself ok.
func (s *Server) serveAllSlots() error {
	if _, err := s.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383"); err != nil && !strings.Contains(err.Error(), "busy") {
		return err
	}
	deadline := time.Now().Add(StartTimeout)
	for {
		info, err := s.command("CLUSTER", "INFO")
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster did not get ready: %v %q", err, info)
		}
		time.Sleep(10 * time.Millisecond) // the state is only visible by asking
	}
}

// command sends one command in RESP and returns a simple or bulk reply.
func (s *Server) command(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	rd := bufio.NewReader(c)
	line, err := rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "-"):
		return "", errors.New(line[1:])
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return strings.TrimPrefix(line, "+"), nil
}

// URL returns the server's URL with a key prefix no other call returned.
func (s *Server) URL() string {
	scheme := "redis"
	if s.opts.TLS {
		scheme = "rediss"
	}
	return fmt.Sprintf("%s://%s/0?prefix=t%d:", scheme, s.Addr, prefixSeq.Add(1))
}

// Stop stops the server as an operator would (SIGTERM: redis-server writes
// what its persistence settings say, then exits) and waits for it to exit.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop(syscall.SIGTERM)
}

// Kill kills the server (SIGKILL: nothing more is written) and waits for it
// to exit.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.stop(syscall.SIGKILL)
}

func (s *Server) stop(sig syscall.Signal) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	<-exited
}

// Pause stops the running server's process (SIGSTOP): it holds its
// connections and answers nothing until Resume, as a stalled Redis does.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume lets a paused server run again (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("redis-server is not running")
	}
	return s.cmd.Process.Signal(sig)
}

// Crash kills the server as Kill does, for programs that are not tests;
// Relaunch starts it again.
func (s *Server) Crash() { s.stop(syscall.SIGKILL) }

// Relaunch starts the server again on the same port and directory, as
// Restart does, for programs that are not tests.
func (s *Server) Relaunch() error { return s.launch() }

// Restart starts the server again on the same port and directory, after
// Stop or Kill.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	// redis-server binds with SO_REUSEADDR, so the port is free again as
	// soon as the old process is gone.
	if err := s.launch(); err != nil {
		t.Fatalf("restarting redis-server: %v", err)
	}
}

// tail keeps the last lines of a server's log, for failure messages.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (l *tail) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
	if len(l.lines) > 20 {
		l.lines = l.lines[1:]
	}
}

func (l *tail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, " | ")
}

// The server shared by the tests of one test binary (see Main).
var shared struct {
	mu      sync.Mutex
	enabled bool
	srv     *Server
	dir     string
	err     error
}

// M is what Main returns: a testing.M that stops the shared server after
// the tests ran.
type M struct{ m *testing.M }

// Main lets the tests of a package share one redis-server, started by the
// first URL call and stopped when m.Run returns.
func Main(m *testing.M) *M {
	shared.mu.Lock()
	shared.enabled = true
	shared.mu.Unlock()
	return &M{m: m}
}

// Run runs the tests, then stops the shared server.
func (w *M) Run() int {
	code := w.m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		shared.srv.stop(syscall.SIGKILL)
		shared.srv = nil
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	return code
}

// URL returns a redis:// URL with a key prefix of its own on the package's
// shared server (see Main), or on a server of t's own when the package does
// not share one. It skips t when redis-server is missing (fails it under
// CI=true).
func URL(t testing.TB) string {
	t.Helper()
	Need(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.enabled {
		return Start(t, Options{}).URL()
	}
	if shared.srv == nil && shared.err == nil {
		dir, err := os.MkdirTemp("", "redistest-")
		if err == nil {
			shared.dir = dir
			shared.srv, err = start(dir, Options{})
		}
		shared.err = err
	}
	if shared.err != nil {
		t.Fatalf("shared redis-server: %v", shared.err)
	}
	return shared.srv.URL()
}

var errNotRunning = errors.New("redis-server is not running")

// Ping checks that the server answers, for tests that wait on a restart.
func (s *Server) Ping() error {
	s.mu.Lock()
	running := s.cmd != nil
	s.mu.Unlock()
	if !running {
		return errNotRunning
	}
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "+PONG\r\n" {
		return fmt.Errorf("unexpected answer %q", buf)
	}
	return nil
}
