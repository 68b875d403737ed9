package main

// The soak's server: postern as its own process, and the metrics read
// from it.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// soakServer is postern running as a child process.
type soakServer struct {
	cmd     *exec.Cmd
	base    string
	logPath string
	exited  chan struct{}
	waitErr error

	mu         sync.Mutex
	logErrors  int
	logWarns   int
	firstError string
}

var soakDebug = os.Getenv("POSTERN_BENCH_SOAK_DEBUG") != ""

var soakListenRE = regexp.MustCompile(`postern (?:\S+ )?listening(?: on https?://|"? addr=)(\S+)`)

// startSoakServer builds ./cmd/postern into dir and starts it on a
// loopback port chosen by the kernel, with the file engine in dir.
func startSoakServer(ctx context.Context, dir string) (*soakServer, error) {
	bin := filepath.Join(dir, "postern")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/postern/postern/cmd/postern")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/postern: %w", err)
	}
	logPath := filepath.Join(dir, "postern.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--store", "file:"+filepath.Join(dir, "data"),
		"--expose-domain", "localhost", "--expose-client-rate", "0", "--log-format", "text",
		// Inbox idempotency keys are remembered this long after they are
		// read (default a week): shortened so that their expiry runs and
		// their memory reaches its steady state within the warm-up.
		"--inbox-expiration", soakInboxExpiration.String())
	if soakDebug {
		cmd.Args = append(cmd.Args, "--log-level", "debug")
	}
	// Only the flags above: no POSTERN_* setting of the caller's leaks in.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POSTERN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	s := &soakServer{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	addr := make(chan string, 1)
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			if m := soakListenRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
			s.mu.Lock()
			switch {
			case strings.Contains(line, "level=ERROR"):
				s.logErrors++
				if s.firstError == "" {
					s.firstError = line
				}
			case strings.Contains(line, "level=WARN"):
				s.logWarns++
			}
			s.mu.Unlock()
		}
	}()
	go func() {
		<-logged // the pipe is read to its end before Wait closes it
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	select {
	case a := <-addr:
		s.base = "http://" + a
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("postern exited at start: %v (log: %s)", s.waitErr, logPath)
	case <-time.After(30 * time.Second):
		s.kill()
		return nil, errors.New("postern did not log 'postern listening' within 30s")
	}
}

// stop sends SIGTERM and waits for the exit; it returns the exit code.
func (s *soakServer) stop() (int, error) {
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return -1, err
	}
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		s.kill()
		return -1, errors.New("no exit within 60s of SIGTERM")
	}
	return s.cmd.ProcessState.ExitCode(), nil
}

// kill ends the process if it still runs (deferred: the harness never
// leaves it behind).
func (s *soakServer) kill() {
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *soakServer) logCounts() (errs, warns int, first string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logErrors, s.logWarns, s.firstError
}

// lineCounter counts the lines written to it.
type lineCounter struct{ n atomic.Int64 }

func (l *lineCounter) Write(p []byte) (int, error) {
	l.n.Add(int64(bytes.Count(p, []byte("\n"))))
	return len(p), nil
}

// The server's metrics.

type soakSample struct {
	at         time.Duration
	rss        float64
	goroutines float64
}

// metrics reads the server's /metrics into name{labels} -> value.
func (r *soakRun) metrics() (map[string]float64, error) {
	ctx, cancel := r.reqCtx()
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", r.base+"/metrics", nil)
	resp, err := r.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("/metrics: %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

func (r *soakRun) sample(at time.Duration) (soakSample, error) {
	m, err := r.metrics()
	if err != nil {
		return soakSample{}, err
	}
	rss, ok1 := m["process_resident_memory_bytes"]
	g, ok2 := m["go_goroutines"]
	if !ok1 || !ok2 {
		return soakSample{}, errors.New("/metrics lacks process_resident_memory_bytes or go_goroutines")
	}
	return soakSample{at: at, rss: rss, goroutines: g}, nil
}

// soakTroubleMetrics are the server's counters that must stay at zero.
var soakTroubleMetrics = []string{
	"postern_broker_slow_dropped_total",
	"postern_broker_malformed_payloads_total",
	"postern_queue_refused_total",
	"postern_queue_trimmed_total",
	"postern_inbox_acks_dropped_total",
	"postern_queue_unsettled_total",
}

// troubleCounters sums, over their labels, the counters that must stay
// zero, the 5xx answers and the relayed requests that did not end well;
// detail names the label sets of the latter.
func (r *soakRun) troubleCounters() (out map[string]float64, detail []string, err error) {
	m, err := r.metrics()
	if err != nil {
		return nil, nil, err
	}
	out = map[string]float64{"postern_http_requests_total{code=5xx}": 0, `postern_relay_requests_total{outcome!="ok"}`: 0}
	for _, name := range soakTroubleMetrics {
		out[name] = 0
	}
	for k, v := range m {
		name, _, _ := strings.Cut(k, "{")
		if _, ok := out[name]; ok {
			out[name] += v
		}
		if name == "postern_http_requests_total" && strings.Contains(k, `code="5`) {
			out["postern_http_requests_total{code=5xx}"] += v
		}
		// Relayed and exposed user requests that did not end "ok"
		// (aborted mid-body, canceled, failed).
		if name == "postern_relay_requests_total" && !strings.Contains(k, `outcome="ok"`) {
			out[`postern_relay_requests_total{outcome!="ok"}`] += v
			if v > 0 {
				detail = append(detail, fmt.Sprintf("%s=%g", k, v))
			}
		}
	}
	slices.Sort(detail)
	return out, detail, nil
}
