// Package redistest starts private Redis deployments for tests: a
// redis-server (Start, URL), a Redis Cluster of six redis-server processes,
// three masters each with a replica (StartCluster, ClusterURL), and a
// master with replicas watched by three redis-sentinel processes
// (StartSentinel). Every process listens on a free 127.0.0.1 port, keeps
// its files in a temporary directory and is killed when the test (or the
// test binary) ends.
//
// Tests that share one server, or one cluster, per test package install
// the sharing in TestMain and take a fresh key prefix per test:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }
//
//	cfg.Store = redistest.URL(t)        // redis://127.0.0.1:<port>/0?prefix=t7:
//	cfg.Store = redistest.ClusterURL(t) // redis://127.0.0.1:<port>/0?addr=...&prefix=t8:
//
// When redis-server is not installed the tests that need it are skipped
// with a clear message, except under CI=true, where that is a failure.
package redistest

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"strings"

	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Programs looked up on PATH.
const (
	Program         = "redis-server"
	SentinelProgram = "redis-sentinel"
	CLIProgram      = "redis-cli"
)

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
	// ReplicaOf, "host:port", makes the server a replica of that master.
	ReplicaOf string
	// Args are more redis-server arguments ("--name", "value", ...).
	Args []string

	// member makes the server a cluster node that joins a cluster later
	// (StartCluster); its cluster bus listens on its port + 10000.
	member bool
}

// Server is a running (or stopped) private redis-server.
type Server struct {
	// Addr is "127.0.0.1:<port>".
	Addr string
	// Dir is the server's working directory (RDB and AOF files).
	Dir  string
	opts Options

	caPool *x509.CertPool // with Options.TLS

	mu sync.Mutex
	p  *proc
}

var prefixSeq atomic.Int64

// Need skips t when redis-server is not installed, or fails it under
// CI=true.
func Need(t testing.TB) { t.Helper(); need(t, Program, "redis-server") }

func need(t testing.TB, program, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(program); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed, and CI=true requires the Redis tests to run (install the %s package)", program, pkg)
		}
		t.Skipf("%s is not installed: skipping the Redis tests that need it (install the %s package to run them)", program, pkg)
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
	t.Cleanup(s.Close)
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
	if s.p == nil {
		return 0
	}
	return s.p.cmd.Process.Pid
}

// Close kills the server and waits for it to exit.
func (s *Server) Close() { s.stop(syscall.SIGKILL) }

func start(dir string, opts Options) (*Server, error) {
	pick := freePort
	if opts.member {
		pick = freeClusterPort
	}
	var lastErr error
	for range 5 { // a free port may be taken between probe and bind
		port, err := pick()
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

// busOffset is how far above its port a cluster node's bus listens; the
// bus port must stay below 65536.
const busOffset = 10000

// freeClusterPort returns a port that is free on 127.0.0.1 together with
// its cluster bus port. The kernel's own choice is often too high for a
// bus port, so it tries random ports below 55536.
func freeClusterPort() (int, error) {
	for range 100 {
		port := 20000 + rand.IntN(65536-busOffset-20000)
		a, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+busOffset)))
		a.Close()
		if err != nil {
			continue
		}
		b.Close()
		return port, nil
	}
	return 0, errors.New("no free pair of ports for a cluster node and its bus")
}

// launch starts the process on s.Addr and waits until it accepts
// connections.
func (s *Server) launch() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{
		"--port", port, "--bind", "127.0.0.1", "--dir", s.Dir,
		"--save", s.opts.Save, "--daemonize", "no", "--logfile", "",
		"--loglevel", "notice", "--databases", "16",
		// A replica that connects is sent the data set at once, not
		// after waiting 5 s for more replicas to share the transfer.
		"--repl-diskless-sync-delay", "0",
	}
	if s.opts.AppendOnly {
		fsync := s.opts.AppendFsync
		if fsync == "" {
			fsync = "everysec"
		}
		args = append(args, "--appendonly", "yes", "--appendfsync", fsync,
			"--appendfilename", "appendonly-"+port+".aof", "--appenddirname", "aof-"+port)
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.opts.member {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes-"+port+".conf")
	}
	if s.opts.ReplicaOf != "" {
		host, rport, err := net.SplitHostPort(s.opts.ReplicaOf)
		if err != nil {
			return fmt.Errorf("replica of %q: %v", s.opts.ReplicaOf, err)
		}
		args = append(args, "--replicaof", host, rport)
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
	args = append(args, s.opts.Args...)
	p, err := spawn(Program, args, s.Dir, "Ready to accept connections")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.p = p
	s.mu.Unlock()
	return nil
}

// WaitSynced waits until the server, a replica, is in sync with its
// master.
func (s *Server) WaitSynced(timeout time.Duration) error {
	return waitFor(timeout, s.Addr+" in sync with its master", func() (bool, error) {
		_, err := synced(s.Addr)
		return err == nil, err
	})
}

// WaitCaughtUp waits until every replica of the server, a master, has
// received all the master had written when it was called.
func (s *Server) WaitCaughtUp(timeout time.Duration) error {
	info, err := doString(s.Addr, "INFO", "replication")
	if err != nil {
		return err
	}
	want, _ := strconv.ParseInt(infoField(info, "master_repl_offset"), 10, 64)
	return waitFor(timeout, "replicas of "+s.Addr+" caught up", func() (bool, error) {
		info, err := doString(s.Addr, "INFO", "replication")
		if err != nil {
			return false, err
		}
		for i := range 16 {
			v := infoField(info, fmt.Sprint("slave", i))
			if v == "" {
				return true, nil
			}
			_, off, _ := strings.Cut(v, ",offset=")
			off, _, _ = strings.Cut(off, ",")
			if n, _ := strconv.ParseInt(off, 10, 64); n < want {
				return false, nil
			}
		}
		return true, nil
	})
}

// synced reports whether the server at addr is a replica in sync with its
// master, and which that is: the replica says its link is up and the
// master counts it online (only then does WAIT count it).
func synced(addr string) (master string, err error) {
	info, err := doString(addr, "INFO", "replication")
	if err != nil {
		return "", err
	}
	if role := infoField(info, "role"); role != "slave" {
		return "", fmt.Errorf("%s: role %s, not a replica", addr, role)
	}
	if st := infoField(info, "master_link_status"); st != "up" {
		return "", fmt.Errorf("%s: master link %s", addr, st)
	}
	master = net.JoinHostPort(infoField(info, "master_host"), infoField(info, "master_port"))
	minfo, err := doString(master, "INFO", "replication", "cluster")
	if err != nil {
		return "", err
	}
	_, port, _ := net.SplitHostPort(addr)
	online, replicas := false, 0
	for i := range 16 {
		v := infoField(minfo, fmt.Sprint("slave", i))
		if v == "" {
			break
		}
		if strings.Contains(","+v+",", ",state=online,") {
			replicas++
			online = online || strings.Contains(","+v+",", ",port="+port+",")
		}
	}
	if !online {
		return "", fmt.Errorf("%s: master %s does not count it online yet", addr, master)
	}
	if infoField(minfo, "cluster_enabled") == "1" {
		// A key the master serves would have to be found first.
		return master, nil
	}
	// Right after the first sync a replica may not acknowledge a write for
	// up to a second: they are in sync once they all confirm one.
	r, err := doAll(master, []string{"SET", "redistest:synced", "1", "PX", "1000"}, []string{"WAIT", fmt.Sprint(replicas), "100"})
	if err != nil {
		return "", err
	}
	if n, _ := r[1].(int64); n < int64(replicas) {
		return "", fmt.Errorf("%s: %d of %d replicas of %s confirm a write", addr, n, replicas, master)
	}
	return master, nil
}

// Do sends the server one command on a connection of its own and returns
// its reply: a string, an int64, nil, []any, or a RedisError as the error.
// It is for setting servers up and looking at them, not for the code under
// test.
func (s *Server) Do(args ...string) (any, error) { return do(s.Addr, args...) }

// Info returns field of the server's INFO section ("" when absent).
func (s *Server) Info(section, field string) (string, error) {
	info, err := doString(s.Addr, "INFO", section)
	if err != nil {
		return "", err
	}
	return infoField(info, field), nil
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
	p := s.p
	s.p = nil
	s.mu.Unlock()
	if p != nil {
		p.stop(sig)
	}
}

// Pause stops the running server's process (SIGSTOP): it holds its
// connections and answers nothing until Resume, as a stalled Redis does.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume lets a paused server run again (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return errors.New("redis-server is not running")
	}
	return s.p.cmd.Process.Signal(sig)
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

// What the tests of one test binary share (see Main): one server and one
// cluster, each started by the first test that asks for it.
var shared struct {
	mu      sync.Mutex
	enabled bool
	srv     *Server
	cluster *Cluster
	dirs    []string
	srvErr  error
	clErr   error
}

// M is what Main returns: a testing.M that stops what the tests shared
// after they ran.
type M struct{ m *testing.M }

// Main lets the tests of a package share one redis-server (URL) and one
// Redis Cluster (ClusterURL), each started by the first test that asks for
// it and stopped when m.Run returns.
func Main(m *testing.M) *M {
	shared.mu.Lock()
	shared.enabled = true
	shared.mu.Unlock()
	return &M{m: m}
}

// Run runs the tests, then stops what they shared.
func (w *M) Run() int {
	code := w.m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		shared.srv.Close()
		shared.srv = nil
	}
	if shared.cluster != nil {
		shared.cluster.Close()
		shared.cluster = nil
	}
	for _, d := range shared.dirs {
		os.RemoveAll(d)
	}
	shared.dirs = nil
	awaitClusterClientCleanup()
	return code
}

// clusterCleanupFunc is the goroutine a rueidis Cluster client starts when
// a topology refresh replaces a connection: it closes the old one five
// seconds later, by itself, even after the client was closed.
const clusterCleanupFunc = "rueidis.(*clusterClient)._refresh.func"

// awaitClusterClientCleanup waits (up to six seconds) until no Cluster
// client of the tests has a connection closing left, so that the leak
// check that follows Run sees only goroutines that would stay.
func awaitClusterClientCleanup() {
	deadline := time.Now().Add(6 * time.Second)
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		if n == len(buf) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if !bytes.Contains(buf[:n], []byte(clusterCleanupFunc)) {
			return
		}
		time.Sleep(50 * time.Millisecond) // the goroutine sleeps; nothing signals its end
	}
}

// sharedDir makes a directory that Run removes; shared.mu must be held.
func sharedDir() (string, error) {
	dir, err := os.MkdirTemp("", "redistest-")
	if err == nil {
		shared.dirs = append(shared.dirs, dir)
	}
	return dir, err
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
	if shared.srv == nil && shared.srvErr == nil {
		var dir string
		if dir, shared.srvErr = sharedDir(); shared.srvErr == nil {
			shared.srv, shared.srvErr = start(dir, Options{})
		}
	}
	if shared.srvErr != nil {
		t.Fatalf("shared redis-server: %v", shared.srvErr)
	}
	return shared.srv.URL()
}

// ClusterURL returns a redis:// URL naming every node, with a key prefix
// of its own, on the package's shared Redis Cluster (see Main: three
// masters, each with a replica), or on a cluster of t's own when the
// package does not share one. Tests on the shared cluster must not stop
// its nodes; a test that kills one starts a cluster of its own.
func ClusterURL(t testing.TB) string {
	t.Helper()
	NeedCluster(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.enabled {
		return StartCluster(t, ClusterOptions{}).URL()
	}
	if shared.cluster == nil && shared.clErr == nil {
		var dir string
		if dir, shared.clErr = sharedDir(); shared.clErr == nil {
			shared.cluster, shared.clErr = LaunchCluster(dir, ClusterOptions{})
		}
	}
	if shared.clErr != nil {
		t.Fatalf("shared Redis Cluster: %v", shared.clErr)
	}
	return shared.cluster.URL()
}

var errNotRunning = errors.New("redis-server is not running")

// Ping checks that the server answers, for tests that wait on a restart.
func (s *Server) Ping() error {
	s.mu.Lock()
	running := s.p != nil
	s.mu.Unlock()
	if !running {
		return errNotRunning
	}
	r, err := doString(s.Addr, "PING")
	if err != nil {
		return err
	}
	if r != "PONG" {
		return fmt.Errorf("unexpected answer %q", r)
	}
	return nil
}
