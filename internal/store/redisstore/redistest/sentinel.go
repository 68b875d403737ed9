package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Defaults of SentinelOptions.
const (
	// DefaultMasterName is the name the sentinels monitor the master by.
	DefaultMasterName = "postern"
	// DefaultSentinels is how many redis-sentinel processes watch; a
	// majority of them (the quorum) must agree that the master is down.
	DefaultSentinels = 3
	// DefaultDownAfter is the sentinels' down-after-milliseconds: how long
	// the master may not answer before it counts as down. A replica is
	// promoted a few seconds after that.
	DefaultDownAfter = time.Second
)

// SentinelOptions configure a master, its replicas and their sentinels.
type SentinelOptions struct {
	// Replicas is the number of replicas; zero means 1.
	Replicas int
	// Sentinels is the number of sentinels; zero means DefaultSentinels.
	Sentinels int
	// DownAfter is down-after-milliseconds; zero means DefaultDownAfter.
	DownAfter time.Duration
}

// Sentinel is a running master with replicas, watched by redis-sentinel
// processes, all private and on 127.0.0.1.
type Sentinel struct {
	// MasterName is the name the sentinels know the master by.
	MasterName string
	// Servers are the master (first, as started) and its replicas.
	Servers []*Server
	// Sentinels are the watching redis-sentinel processes.
	Sentinels []*SentinelProcess
}

// SentinelProcess is one running redis-sentinel.
type SentinelProcess struct {
	// Addr is "127.0.0.1:<port>".
	Addr string
	mu   sync.Mutex
	p    *proc
}

// NeedSentinel skips t when redis-server or redis-sentinel is not
// installed, or fails it under CI=true.
func NeedSentinel(t testing.TB) {
	t.Helper()
	need(t, Program, "redis-server")
	need(t, SentinelProgram, "redis-sentinel")
}

// StartSentinel starts a master, its replicas and the sentinels for t,
// stopped by t.Cleanup. It returns once the replicas are in sync and every
// sentinel knows the master, its replicas and the other sentinels, so a
// failover can start as soon as the master goes down.
func StartSentinel(t testing.TB, opts SentinelOptions) *Sentinel {
	t.Helper()
	NeedSentinel(t)
	s, err := launchSentinel(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func launchSentinel(dir string, opts SentinelOptions) (*Sentinel, error) {
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.Sentinels <= 0 {
		opts.Sentinels = DefaultSentinels
	}
	if opts.DownAfter <= 0 {
		opts.DownAfter = DefaultDownAfter
	}
	s := &Sentinel{MasterName: DefaultMasterName}
	sub := func(name string) (string, error) {
		d := filepath.Join(dir, name)
		return d, os.MkdirAll(d, 0o700)
	}
	d, err := sub("master")
	if err != nil {
		return nil, err
	}
	master, err := start(d, Options{})
	if err != nil {
		return nil, err
	}
	s.Servers = append(s.Servers, master)
	for i := range opts.Replicas {
		d, err := sub(fmt.Sprint("replica", i))
		if err == nil {
			var r *Server
			if r, err = start(d, Options{ReplicaOf: master.Addr}); err == nil {
				s.Servers = append(s.Servers, r)
			}
		}
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := s.waitReplicas(master, opts.Replicas); err != nil {
		s.Close()
		return nil, err
	}
	quorum := opts.Sentinels/2 + 1
	for i := range opts.Sentinels {
		d, err := sub(fmt.Sprint("sentinel", i))
		if err == nil {
			var sp *SentinelProcess
			if sp, err = startSentinelProcess(d, s.MasterName, master.Addr, quorum, opts.DownAfter); err == nil {
				s.Sentinels = append(s.Sentinels, sp)
			}
		}
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := s.waitWatching(master, opts.Replicas); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func startSentinelProcess(dir, name, master string, quorum int, downAfter time.Duration) (*SentinelProcess, error) {
	host, port, _ := net.SplitHostPort(master)
	var lastErr error
	for range 3 { // a free port may be taken between probe and bind
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		// Sentinel rewrites its configuration file: it must be writable.
		conf := filepath.Join(dir, "sentinel.conf")
		text := strings.Join([]string{
			"port " + strconv.Itoa(p),
			"bind 127.0.0.1",
			"daemonize no",
			`logfile ""`,
			"dir " + dir,
			fmt.Sprintf("sentinel monitor %s %s %s %d", name, host, port, quorum),
			fmt.Sprintf("sentinel down-after-milliseconds %s %d", name, downAfter.Milliseconds()),
			// A failed election is tried again after twice this.
			fmt.Sprintf("sentinel failover-timeout %s %d", name, 3*downAfter.Milliseconds()),
			fmt.Sprintf("sentinel parallel-syncs %s 1", name),
			"",
		}, "\n")
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			return nil, err
		}
		sp := &SentinelProcess{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))}
		if sp.p, lastErr = spawn(SentinelProgram, []string{conf}, dir, "+monitor master"); lastErr == nil {
			return sp, nil
		}
	}
	return nil, lastErr
}

// Close kills every process and waits for them to exit.
func (s *Sentinel) Close() {
	var wg sync.WaitGroup
	for _, sp := range s.Sentinels {
		wg.Go(sp.Close)
	}
	for _, srv := range s.Servers {
		wg.Go(srv.Close)
	}
	wg.Wait()
}

// Close kills the sentinel and waits for it to exit.
func (sp *SentinelProcess) Close() {
	sp.mu.Lock()
	p := sp.p
	sp.p = nil
	sp.mu.Unlock()
	if p != nil {
		p.stop(syscall.SIGKILL)
	}
}

// URL returns a redis-sentinel:// URL naming every sentinel and the
// master, with a key prefix no other call returned.
func (s *Sentinel) URL() string {
	addrs := make([]string, len(s.Sentinels))
	for i, sp := range s.Sentinels {
		addrs[i] = sp.Addr
	}
	return fmt.Sprintf("redis-sentinel://%s/%s/0?prefix=t%d:", strings.Join(addrs, ","), s.MasterName, prefixSeq.Add(1))
}

// Master returns the server the sentinels name as the master now.
func (s *Sentinel) Master() (*Server, error) {
	var lastErr error
	for _, sp := range s.Sentinels {
		r, err := do(sp.Addr, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.MasterName)
		if err != nil {
			lastErr = err
			continue
		}
		arr, _ := r.([]any)
		if len(arr) != 2 {
			return nil, fmt.Errorf("sentinel %s: unexpected reply %v", sp.Addr, r)
		}
		addr := fmt.Sprintf("%v:%v", arr[0], arr[1])
		for _, srv := range s.Servers {
			if srv.Addr == addr {
				return srv, nil
			}
		}
		return nil, fmt.Errorf("sentinel %s names master %s, which is none of the servers", sp.Addr, addr)
	}
	return nil, fmt.Errorf("no sentinel answers: %w", lastErr)
}

// waitReplicas waits until n replicas are in sync with master.
func (s *Sentinel) waitReplicas(master *Server, n int) error {
	return waitFor(ClusterTimeout, "replicas in sync", func() (bool, error) {
		ok := 0
		for _, r := range s.Servers {
			if r == master || r.PID() == 0 {
				continue
			}
			if m, err := synced(r.Addr); err == nil && m == master.Addr {
				ok++
			}
		}
		if ok < n {
			return false, fmt.Errorf("%d of %d replicas of %s in sync", ok, n, master.Addr)
		}
		return true, nil
	})
}

// waitWatching waits until every running sentinel names master, knows
// replicas of it and sees every other sentinel.
func (s *Sentinel) waitWatching(master *Server, replicas int) error {
	return waitFor(ClusterTimeout, "sentinels watching", func() (bool, error) {
		n := 0
		for _, sp := range s.Sentinels {
			if sp.running() {
				n++
			}
		}
		for _, sp := range s.Sentinels {
			if !sp.running() {
				continue
			}
			r, err := do(sp.Addr, "SENTINEL", "MASTER", s.MasterName)
			if err != nil {
				return false, err
			}
			m := pairs(r)
			addr := fmt.Sprintf("%v:%v", m["ip"], m["port"])
			flags, _ := m["flags"].(string)
			switch {
			case addr != master.Addr:
				return false, fmt.Errorf("sentinel %s names master %s", sp.Addr, addr)
			case flags != "master":
				return false, fmt.Errorf("sentinel %s flags the master %s", sp.Addr, flags)
			case fmt.Sprint(m["num-slaves"]) != strconv.Itoa(replicas):
				return false, fmt.Errorf("sentinel %s knows %v replicas", sp.Addr, m["num-slaves"])
			case fmt.Sprint(m["num-other-sentinels"]) != strconv.Itoa(n-1):
				return false, fmt.Errorf("sentinel %s knows %v other sentinels", sp.Addr, m["num-other-sentinels"])
			}
		}
		return true, nil
	})
}

// WaitFailover waits until the sentinels have promoted a replica in place
// of old (killed by the test): every sentinel names the new master, which
// answers as a master. It returns the new master.
func (s *Sentinel) WaitFailover(old *Server, timeout time.Duration) (*Server, error) {
	var got *Server
	err := waitFor(timeout, "sentinel failover", func() (bool, error) {
		var master *Server
		for _, sp := range s.Sentinels {
			if !sp.running() {
				continue
			}
			r, err := do(sp.Addr, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.MasterName)
			if err != nil {
				return false, err
			}
			arr, _ := r.([]any)
			if len(arr) != 2 {
				return false, fmt.Errorf("sentinel %s: unexpected reply %v", sp.Addr, r)
			}
			addr := fmt.Sprintf("%v:%v", arr[0], arr[1])
			if addr == old.Addr {
				return false, fmt.Errorf("sentinel %s still names %s", sp.Addr, addr)
			}
			if master != nil && master.Addr != addr {
				return false, errors.New("sentinels disagree on the master")
			}
			for _, srv := range s.Servers {
				if srv.Addr == addr {
					master = srv
				}
			}
			if master == nil {
				return false, fmt.Errorf("sentinel %s names %s, none of the servers", sp.Addr, addr)
			}
		}
		if master == nil {
			return false, errors.New("no sentinel is running")
		}
		if role, err := master.Info("replication", "role"); role != "master" {
			return false, fmt.Errorf("promoted %s answers role %q (%v)", master.Addr, role, err)
		}
		got = master
		return true, nil
	})
	return got, err
}

func (sp *SentinelProcess) running() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.p != nil
}
