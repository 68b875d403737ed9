package main

// The soak scenario: every capability at once, at modest rates, for a long
// time, against postern running as its own process (built from
// ./cmd/postern, serving on the file engine), so that the resident memory
// and goroutine counts read from its /metrics are the server's alone.
//
//	go run ./bench -run soak -count 1 -soak 10m
//
// It checks correctness and flatness, not speed:
//   - tunnels: paced producers number their messages per tunnel; pending
//     consumers (long-poll, acknowledge), plain long-poll consumers, plain
//     non-blocking consumers and a reply tunnel. Every message answered 201
//     must be delivered, in order, exactly once (plain) or at least once
//     (pending, where a re-delivery is counted apart);
//   - inbox: actors send to one or two others, most with expectsAck,
//     through send or exchange, and receive all the time: every copy must
//     arrive once, every ack asked for must come back once, no other;
//   - channels: websocket subscribers come and go (fresh, or resuming
//     after the last id they saw) while paced publishers number their
//     messages: a subscriber must receive every message published while it
//     was subscribed, in order and once, unless the server signalled a gap;
//   - relay: a backend served through the node by the project's Go relay
//     client (gcrclient); user requests under /client/NAME/ with echoed or
//     generated bodies, each checked byte for byte;
//   - expose: a native agent (client.Expose) in front of the same backend,
//     reached by Host, with the same checks.
//
// Every 10 s the harness reads process_resident_memory_bytes and
// go_goroutines from the server. After the load stops, consumers drain
// what is left, the server's own counters of trouble (5xx answers,
// dropped subscribers, refused or trimmed appends, lost acks) are read,
// and the server is stopped with SIGTERM and must exit 0. The scenario
// fails on any error, lost, duplicated or misordered message, or growth.
//
// Diagnostics: POSTERN_BENCH_SOAK_DEBUG=1 runs the server with
// --log-level debug (its log, one line per request, is kept in the
// temporary directory the harness names when the soak fails) and writes
// the expose agent's debug log to the harness's standard error.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
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
	"text/tabwriter"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/gcrrelay/gcrclient"
)

func init() {
	register(Scenario{
		Name:     "soak",
		Baseline: "none: correctness and flat memory under mixed load (only with -soak DURATION)",
		Run:      runSoak,
	})
}

// Soak settings. The rates are per producer; all of it together is a few
// hundred requests a second, which 2 shared cores carry with room to spare.
const (
	soakWarmup      = time.Minute      // samples before it are not judged (a quarter of shorter soaks)
	soakSampleEvery = 10 * time.Second // RSS and goroutines are read this often
	soakDrain       = 30 * time.Second // longest wait for consumers to take what is left
	soakReqTimeout  = 30 * time.Second // longest single request

	soakInboxExpiration = 30 * time.Second

	soakTunnelRate   = 20 // messages/s per tunnel producer
	soakTunnelBody   = 128
	soakInboxActors  = 6
	soakInboxRate    = 4 // sends/s per actor
	soakChannels     = 4
	soakChannelRate  = 10 // messages/s per channel publisher
	soakSubscribers  = 3  // per channel
	soakRelayWorkers = 4
	soakRelayRate    = 5 // requests/s per relay worker
	soakExpWorkers   = 2
	soakExposeRate   = 5 // requests/s per expose worker

	// Flat: the last sample within soakFlatRel of the warm-up sample plus
	// the slack, and the least-squares trend over the judged samples not
	// rising by more than that over the run either.
	soakFlatRel        = 0.10
	soakRSSSlack       = 8 << 20
	soakGoroutineSlack = 40
)

// soakTunnelKinds is one tunnel per entry: how its consumer reads.
var soakTunnelKinds = []string{"pending", "pending", "pending", "poll", "poll", "plain", "plain", "reply"}

// soakRun is one soak: the server, the clients and what was found.
type soakRun struct {
	base    string // http://127.0.0.1:PORT of the server
	port    string // ":PORT"
	hardCtx context.Context
	runCtx  context.Context // ends when the load stops
	hc      *http.Client
	cl      *client.Client

	errs soakErrors
}

// reqCtx bounds one request: it is not cut when the load stops, only when
// the harness is interrupted, so that no answer is lost by the harness.
func (r *soakRun) reqCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.hardCtx, soakReqTimeout)
}

// soakErrors counts errors by area and keeps the first few.
type soakErrors struct {
	mu    sync.Mutex
	n     map[string]int
	first []string
}

func (e *soakErrors) add(area string, format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[area]++
	if len(e.first) < 20 {
		e.first = append(e.first, area+": "+fmt.Sprintf(format, args...))
	}
}

func (e *soakErrors) count(area string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[area]
}

func (e *soakErrors) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := 0
	for _, n := range e.n {
		t += n
	}
	return t
}

// paced calls f every 1/rate seconds until ctx ends (a slow f skips ticks).
func paced(ctx context.Context, rate float64, f func(seq int)) {
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f(seq)
	}
}

func runSoak(ctx context.Context, o Options) ([]Figure, error) {
	if o.Soak <= 0 {
		fmt.Fprintln(os.Stderr, "  soak: skipped; it runs only when asked for: go run ./bench -run soak -count 1 -soak 10m")
		return nil, nil
	}
	dir, err := os.MkdirTemp("", "postern-soak-")
	if err != nil {
		return nil, err
	}
	failed := true // the directory, with the server's log, is kept then
	defer func() {
		if failed {
			fmt.Fprintf(os.Stderr, "  soak: the server's directory and log are kept in %s\n", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()

	srv, err := startSoakServer(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer srv.kill()
	fmt.Fprintf(os.Stderr, "  soak: postern (pid %d) at %s, file engine, for %v; log in %s\n", srv.cmd.Process.Pid, srv.base, o.Soak, srv.logPath)

	backendURL, stopBackend, err := startHTTP(soakBackend)
	if err != nil {
		return nil, err
	}
	defer stopBackend()

	// The harness keeps its idle connections (the server's idle timeout
	// still closes those unused for long), so that the server's goroutine
	// count does not follow the client pool's ups and downs.
	hc := httpClient(128)
	hc.Transport.(*http.Transport).IdleConnTimeout = 0
	defer hc.CloseIdleConnections()
	cl, err := client.New(srv.base, client.WithHTTPClient(hc))
	if err != nil {
		return nil, err
	}
	r := &soakRun{base: srv.base, port: portOf(srv.base), hardCtx: ctx, hc: hc, cl: cl}

	// The relay client and the expose agent, both ready before the clock
	// starts.
	agentsCtx, stopAgents := context.WithCancel(ctx)
	var agents sync.WaitGroup
	defer func() { stopAgents(); agents.Wait() }()
	rc, err := gcrclient.New(gcrclient.Options{
		RelayURL: srv.base, ServerName: "soak", BackendURL: backendURL,
		NumPendingRequests: soakRelayWorkers, Relay: httpClient(2 * soakRelayWorkers), Backend: httpClient(2 * soakRelayWorkers),
	})
	if err != nil {
		return nil, err
	}
	agents.Go(func() {
		if err := rc.Run(agentsCtx); err != nil && agentsCtx.Err() == nil {
			r.errs.add("relay", "relay client stopped: %v", err)
		}
	})
	var exposeReady atomic.Int64
	ready := make(chan struct{}, 1)
	exposeLog := &lineCounter{}
	agentLog := slog.New(slog.NewTextHandler(exposeLog, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if soakDebug {
		agentLog = slog.New(slog.NewMultiHandler(agentLog.Handler(), slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	}
	agents.Go(func() {
		err := cl.Expose(agentsCtx, client.ExposeOptions{
			Name: "soakx", Local: backendURL, Logger: agentLog,
			OnReady: func(string) {
				exposeReady.Add(1)
				select {
				case ready <- struct{}{}:
				default:
				}
			},
		})
		if err != nil {
			r.errs.add("expose", "agent stopped: %v", err)
		}
	})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		return nil, errors.New("expose agent not ready within 20s")
	}
	if err := r.waitRelay(); err != nil {
		return nil, err
	}

	idle, err := r.sample(0)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	runCtx, stopLoad := context.WithTimeout(ctx, o.Soak)
	defer stopLoad()
	r.runCtx = runCtx

	// Sampler: every soakSampleEvery, and a last time a second before the
	// load stops, so that every sample is taken under load.
	var samples []soakSample
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for at := soakSampleEvery; ; at += soakSampleEvery {
			final := at >= o.Soak-time.Second
			if final {
				at = o.Soak - time.Second
			}
			t := time.NewTimer(time.Until(start.Add(at)))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			s, err := r.sample(time.Since(start))
			if err != nil {
				r.errs.add("metrics", "%v", err)
			} else {
				samples = append(samples, s)
				fmt.Fprintf(os.Stderr, "  soak: t=%-5v rss=%.1f MB goroutines=%.0f\n", s.at.Round(time.Second), s.rss/(1<<20), s.goroutines)
			}
			if final {
				return
			}
		}
	}()

	var load sync.WaitGroup
	tunnels := r.startTunnels(&load)
	inbox := r.startInbox(&load)
	chans := r.startChannels(&load)
	relayOps := r.startChecked(&load, "relay", srv.base+"/client/soak", "", soakRelayWorkers, soakRelayRate)
	exposeOps := r.startChecked(&load, "expose", srv.base, "soakx.localhost"+r.port, soakExpWorkers, soakExposeRate)

	<-runCtx.Done()
	<-sampled
	loadTime := time.Since(start)
	load.Wait() // producers stopped, consumers drained (or gave up)
	drainTime := time.Since(start) - loadTime

	counters, detail, err := r.troubleCounters()
	if err != nil {
		r.errs.add("metrics", "%v", err)
	}
	stopAgents()
	agents.Wait()
	if n := exposeReady.Load(); n != 1 {
		r.errs.add("expose", "agent connected %d times, want 1 (its connection dropped)", n)
	}
	if n := exposeLog.n.Load(); n > 0 {
		r.errs.add("expose", "agent logged %d warnings or errors", n)
	}
	stopStart := time.Now()
	exit, err := srv.stop()
	stopTime := time.Since(stopStart)
	if err != nil {
		r.errs.add("server", "stop: %v", err)
	} else if exit != 0 {
		r.errs.add("server", "exited %d after SIGTERM, want 0", exit)
	}
	logErrors, logWarns, firstLog := srv.logCounts()
	if logErrors > 0 {
		r.errs.add("server", "logged %d errors; first: %s", logErrors, firstLog)
	}

	rep := soakReport{
		d: o.Soak, loadTime: loadTime, drainTime: drainTime, idle: idle, samples: samples,
		warmup: min(soakWarmup, o.Soak/4), tunnels: tunnels, inbox: inbox, chans: chans,
		relayOps: relayOps.Load(), exposeOps: exposeOps.Load(), counters: counters, counterDetail: detail,
		logWarns: logWarns, stopTime: stopTime, errs: &r.errs,
	}
	figs, ok := rep.print(os.Stdout, o.Markdown)
	if !ok {
		return figs, errors.New("soak failed: see the report")
	}
	failed = false
	return figs, nil
}

// --- the server process

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

// --- metrics

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
	"postern_inbox_acks_lost_total",
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

// --- tunnels

// soakTunnel is one tunnel, its producer's and its consumer's records.
type soakTunnel struct {
	id, kind string

	mu          sync.Mutex
	created     map[int]bool // seq answered 201
	got         map[int]int  // seq -> deliveries
	outstanding int          // created and not yet delivered
	last        int          // last seq delivered, -1 before the first
	redelivered int          // pending: the same message again (allowed)
	duplicated  int          // plain: a message delivered twice
	misordered  int
	replies     int
	producerOff atomic.Bool
}

func (t *soakTunnel) body(seq int) []byte {
	b := fmt.Appendf(nil, "soak %s %d ", t.id, seq)
	for len(b) < soakTunnelBody {
		b = append(b, 'x')
	}
	return b
}

func (t *soakTunnel) sent(seq int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.created[seq] = true
	if t.got[seq] == 0 {
		t.outstanding++
	}
}

// delivered records one delivery and reports a problem, if any.
func (t *soakTunnel) delivered(body []byte) (int, error) {
	f := strings.Fields(string(body))
	if len(f) != 4 || f[0] != "soak" || f[1] != t.id {
		return -1, fmt.Errorf("tunnel %s: unexpected body %.60q", t.id, body)
	}
	seq, err := strconv.Atoi(f[2])
	if err != nil || !bytes.Equal(body, t.body(seq)) {
		return -1, fmt.Errorf("tunnel %s: damaged body %.60q", t.id, body)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.got[seq]++
	switch {
	case t.got[seq] == 1:
		if t.created[seq] {
			t.outstanding--
		}
		if seq < t.last {
			t.misordered++
			return seq, fmt.Errorf("tunnel %s: message %d after %d", t.id, seq, t.last)
		}
		t.last = seq
	case t.kind != "plain" && t.kind != "poll" && seq == t.last:
		t.redelivered++ // pending: handed out again until acknowledged
	default:
		t.duplicated++
		return seq, fmt.Errorf("tunnel %s: message %d delivered %d times", t.id, seq, t.got[seq])
	}
	return seq, nil
}

// done says whether the consumer may stop: the producer stopped and
// everything it was answered 201 for arrived.
func (t *soakTunnel) done() bool {
	if !t.producerOff.Load() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.outstanding == 0
}

func (t *soakTunnel) counts() (created, delivered, lost int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for seq := range t.created {
		if t.got[seq] == 0 {
			lost++
		}
	}
	for _, n := range t.got {
		delivered += n
	}
	return len(t.created), delivered, lost
}

func (r *soakRun) startTunnels(wg *sync.WaitGroup) []*soakTunnel {
	var out []*soakTunnel
	for i, kind := range soakTunnelKinds {
		t := &soakTunnel{id: fmt.Sprintf("soak-%d-%s", i, kind), kind: kind, created: map[int]bool{}, got: map[int]int{}, last: -1}
		out = append(out, t)
		tun := r.cl.Tunnel(t.id)
		// Consumers stop once the producer did and everything arrived, or
		// soakDrain after the load stopped.
		cctx, ccancel := context.WithCancel(r.hardCtx)
		stopAfterDrain := context.AfterFunc(r.runCtx, func() { time.AfterFunc(soakDrain, ccancel) })
		wg.Go(func() {
			defer t.producerOff.Store(true)
			paced(r.runCtx, soakTunnelRate, func(seq int) {
				ctx, cancel := r.reqCtx()
				defer cancel()
				res, err := tun.Send(ctx, t.body(seq), client.SendOptions{ContentType: "text/plain"})
				if err != nil {
					r.errs.add("tunnels", "send %s %d: %v", t.id, seq, err)
					return
				}
				t.sent(seq)
				if kind != "reply" {
					return
				}
				m, ok, err := tun.ReadReply(ctx, res.ID, 10*time.Second)
				switch {
				case err != nil:
					r.errs.add("tunnels", "read reply %s %d: %v", t.id, seq, err)
				case !ok:
					r.errs.add("tunnels", "no reply to %s %d within 10s", t.id, seq)
				case !bytes.Equal(m.Body, append([]byte("re:"), t.body(seq)...)):
					r.errs.add("tunnels", "wrong reply to %s %d: %.40q", t.id, seq, m.Body)
				default:
					t.mu.Lock()
					t.replies++
					t.mu.Unlock()
				}
			})
		})
		wg.Go(func() {
			defer ccancel()
			defer stopAfterDrain()
			r.tunnelConsumer(cctx, tun, t)
			if !t.done() {
				r.errs.add("tunnels", "%s: consumer gave up %v after the load stopped", t.id, soakDrain)
			}
		})
	}
	return out
}

func (r *soakRun) tunnelConsumer(ctx context.Context, tun *client.Tunnel, t *soakTunnel) {
	opts := client.ReceiveOptions{}
	switch t.kind {
	case "pending", "reply":
		opts = client.ReceiveOptions{Pending: true, Wait: 5 * time.Second}
	case "poll":
		opts.Wait = 5 * time.Second
	}
	idle := time.NewTicker(50 * time.Millisecond) // the plain consumer's pace on an empty tunnel
	defer idle.Stop()
	for ctx.Err() == nil && !t.done() {
		rctx, cancel := context.WithTimeout(ctx, soakReqTimeout)
		m, ok, err := tun.Receive(rctx, opts)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.errs.add("tunnels", "receive %s: %v", t.id, err)
			continue
		}
		if !ok {
			if t.kind == "plain" {
				select {
				case <-idle.C:
				case <-ctx.Done():
				}
			}
			continue
		}
		seq, err := t.delivered(m.Body)
		if err != nil {
			r.errs.add("tunnels", "%v", err)
		}
		if !opts.Pending {
			continue
		}
		actx, cancel := r.reqCtx()
		if t.kind == "reply" {
			err = tun.Reply(actx, m.ID, append([]byte("re:"), t.body(seq)...), "text/plain")
		} else {
			err = tun.Ack(actx, m.ID)
		}
		cancel()
		if err != nil {
			r.errs.add("tunnels", "ack %s %s: %v", t.id, m.ID, err)
		}
	}
}

// --- inbox

// soakInbox is the record of the inbox actors.
type soakInbox struct {
	mu         sync.Mutex
	msgs       map[string]*soakMail // by idempotency key
	sends      int                  // send and exchange requests answered 200
	receives   int                  // receive requests answered 200
	delivered  int
	acks       int
	duplicated int
	stray      int // entries nobody sent, or for the wrong actor
	sendersOff atomic.Bool
}

type soakMail struct {
	from       int
	to         []int
	expectsAck bool
	accepted   bool        // the send was answered 200
	got        map[int]int // destination -> copies received
	acked      map[int]int // destination -> acks received by the sender
}

func soakActor(i int) string { return fmt.Sprintf("soak-actor-%d", i) }

func soakActorIndex(name string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(name, "soak-actor-"))
	if err != nil || !strings.HasPrefix(name, "soak-actor-") || n < 0 || n >= soakInboxActors {
		return -1
	}
	return n
}

func soakMailBody(key string) json.RawMessage {
	return json.RawMessage(strconv.Quote("body of " + key))
}

// handle checks the entries actor me received.
func (ib *soakInbox) handle(me int, mail []client.Mail) []string {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	var problems []string
	for _, e := range mail {
		switch {
		case e.Message != nil:
			m := ib.msgs[e.Message.IdempotencyKey]
			if m == nil || soakActorIndex(e.Message.Origin) != m.from || !slices.Contains(m.to, me) ||
				!bytes.Equal(e.Message.Body, soakMailBody(e.Message.IdempotencyKey)) || e.Message.ExpectsAck != m.expectsAck {
				ib.stray++
				problems = append(problems, fmt.Sprintf("%s got an unexpected message %+v", soakActor(me), *e.Message))
				continue
			}
			m.got[me]++
			ib.delivered++
			if m.got[me] > 1 {
				ib.duplicated++
				problems = append(problems, fmt.Sprintf("%s got %s %d times", soakActor(me), e.Message.IdempotencyKey, m.got[me]))
			}
		case e.Ack != nil:
			m := ib.msgs[e.Ack.IdempotencyKey]
			dest := soakActorIndex(e.Ack.Destination)
			if m == nil || m.from != me || !m.expectsAck || !slices.Contains(m.to, dest) {
				ib.stray++
				problems = append(problems, fmt.Sprintf("%s got an unexpected ack %+v", soakActor(me), *e.Ack))
				continue
			}
			m.acked[dest]++
			ib.acks++
			if m.acked[dest] > 1 {
				ib.duplicated++
				problems = append(problems, fmt.Sprintf("%s got the ack of %s by %s %d times", soakActor(me), e.Ack.IdempotencyKey, e.Ack.Destination, m.acked[dest]))
			}
		}
	}
	return problems
}

// missing counts copies and acks of accepted messages not yet received.
func (ib *soakInbox) missing() (copies, acks int) {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	for _, m := range ib.msgs {
		if !m.accepted {
			continue
		}
		for _, d := range m.to {
			if m.got[d] == 0 {
				copies++
			}
			if m.expectsAck && m.acked[d] == 0 {
				acks++
			}
		}
	}
	return copies, acks
}

func (r *soakRun) startInbox(wg *sync.WaitGroup) *soakInbox {
	ib := &soakInbox{msgs: map[string]*soakMail{}}
	var senders sync.WaitGroup
	recvCtx, stopRecv := context.WithCancel(r.hardCtx)
	for i := range soakInboxActors {
		actor := r.cl.Inbox(soakActor(i))
		exchange := i >= soakInboxActors/2 // half send with exchange
		senders.Go(func() {
			paced(r.runCtx, soakInboxRate, func(seq int) {
				key := fmt.Sprintf("soak-%02d-%08d", i, seq)
				to := []int{(i + 1 + seq%(soakInboxActors-1)) % soakInboxActors}
				if seq%3 == 0 {
					to = append(to, (to[0]+1+seq%(soakInboxActors-2))%soakInboxActors)
					if to[1] == i {
						to[1] = (to[1] + 1) % soakInboxActors
					}
					if to[1] == to[0] {
						to = to[:1]
					}
				}
				m := &soakMail{from: i, to: to, expectsAck: seq%4 != 0, got: map[int]int{}, acked: map[int]int{}}
				ib.mu.Lock()
				ib.msgs[key] = m
				ib.mu.Unlock()
				env := client.Envelope{IdempotencyKey: key, Body: soakMailBody(key), ExpectsAck: m.expectsAck}
				for _, d := range to {
					env.Destination = append(env.Destination, soakActor(d))
				}
				ctx, cancel := r.reqCtx()
				defer cancel()
				if exchange {
					mail, _, err := actor.Exchange(ctx, env)
					if err != nil {
						r.errs.add("inbox", "exchange %s: %v", key, err)
						return
					}
					ib.accepted(m)
					for _, p := range ib.handle(i, mail) {
						r.errs.add("inbox", "%s", p)
					}
					return
				}
				n, err := actor.Send(ctx, env)
				if err != nil {
					r.errs.add("inbox", "send %s: %v", key, err)
					return
				}
				if n != len(to) {
					r.errs.add("inbox", "send %s: sent %d, want %d", key, n, len(to))
				}
				ib.accepted(m)
			})
		})
		wg.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-recvCtx.Done():
					return
				case <-t.C:
				}
				for more := true; more; {
					ctx, cancel := r.reqCtx()
					mail, remaining, err := actor.Receive(ctx)
					cancel()
					if err != nil {
						r.errs.add("inbox", "receive %s: %v", actor.Actor(), err)
						break
					}
					ib.mu.Lock()
					ib.receives++
					ib.mu.Unlock()
					for _, p := range ib.handle(i, mail) {
						r.errs.add("inbox", "%s", p)
					}
					more = remaining > 0
				}
			}
		})
	}
	// Stop receiving once the senders stopped and everything arrived, or
	// soakDrain later.
	wg.Go(func() {
		defer stopRecv()
		senders.Wait()
		ib.sendersOff.Store(true)
		deadline := time.Now().Add(soakDrain)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			copies, acks := ib.missing()
			if copies == 0 && acks == 0 {
				return
			}
			if time.Now().After(deadline) {
				r.errs.add("inbox", "%d copies and %d acks still missing %v after the load stopped", copies, acks, soakDrain)
				return
			}
			select {
			case <-r.hardCtx.Done():
				return
			case <-t.C:
			}
		}
	})
	return ib
}

func (ib *soakInbox) accepted(m *soakMail) {
	ib.mu.Lock()
	m.accepted = true
	ib.sends++
	ib.mu.Unlock()
}

// --- channels

// soakPublisher numbers the messages of one channel.
type soakPublisher struct {
	idx     int
	ch      *client.Channel
	started atomic.Int64 // publishes started: seq of the next one
	done    atomic.Int64 // every seq below has been answered (or failed)
	failed  sync.Map     // seq -> true: the publish failed
	ok      atomic.Int64
}

// soakChanStats is what the subscribers saw.
type soakChanStats struct {
	subscriptions, delivered, gaps, lost, duplicated, misordered, dropped atomic.Int64
}

// lostBetween counts the seqs in [from, to) that were published
// successfully.
func (p *soakPublisher) lostBetween(from, to int64) int64 {
	var n int64
	for s := from; s < to; s++ {
		if _, f := p.failed.Load(s); !f {
			n++
		}
	}
	return n
}

func (r *soakRun) startChannels(wg *sync.WaitGroup) *soakChanStats {
	st := &soakChanStats{}
	for c := range soakChannels {
		p := &soakPublisher{idx: c, ch: r.cl.Channel(fmt.Sprintf("/soak/%d", c))}
		// The last channel's publisher publishes through its own
		// websocket, the others by POST.
		publish := p.ch.Publish
		var ws *soakWSPublisher
		if c == soakChannels-1 {
			ws = &soakWSPublisher{url: "ws" + strings.TrimPrefix(r.base, "http") + client.DefaultChannelsPrefix + p.ch.Path()}
			publish = ws.publish
		}
		wg.Go(func() {
			if ws != nil {
				defer ws.close()
			}
			paced(r.runCtx, soakChannelRate, func(int) {
				seq := p.started.Add(1) - 1
				defer p.done.Store(seq + 1)
				ctx, cancel := r.reqCtx()
				defer cancel()
				if err := publish(ctx, fmt.Appendf(nil, "c%d-%d", c, seq)); err != nil {
					p.failed.Store(seq, true)
					r.errs.add("channels", "publish %s %d: %v", p.ch.Path(), seq, err)
					return
				}
				p.ok.Add(1)
			})
		})
		for s := range soakSubscribers {
			// Subscriber 0 of each channel resumes after the last id it
			// saw when it comes back; the others start fresh.
			resume := s == 0
			rng := rand.New(rand.NewPCG(uint64(c), uint64(s)))
			wg.Go(func() { r.subscriber(p, resume, rng, st) })
		}
	}
	return st
}

// soakWSPublisher publishes on a channel through a websocket of its own,
// as pinghub's clients do. The server sends every message to every
// subscriber, the sender included: a publish is done when its own message
// comes back.
type soakWSPublisher struct {
	url  string
	conn *websocket.Conn
}

func (p *soakWSPublisher) publish(ctx context.Context, msg []byte) error {
	if p.conn == nil {
		conn, _, err := websocket.Dial(ctx, p.url, nil)
		if err != nil {
			return err
		}
		p.conn = conn
	}
	err := p.conn.Write(ctx, websocket.MessageText, msg)
	if err == nil {
		var typ websocket.MessageType
		var echo []byte
		typ, echo, err = p.conn.Read(ctx)
		if err == nil && (typ != websocket.MessageText || !bytes.Equal(echo, msg)) {
			err = fmt.Errorf("own message came back as %.40q", echo)
		}
	}
	if err != nil {
		p.close()
	}
	return err
}

func (p *soakWSPublisher) close() {
	if p.conn != nil {
		p.conn.Close(websocket.StatusNormalClosure, "")
		p.conn = nil
	}
}

// subscriber subscribes, reads for a while, closes, and again, until the
// load stops, checking what it got against what p published.
func (r *soakRun) subscriber(p *soakPublisher, resume bool, rng *rand.Rand, st *soakChanStats) {
	prefix := fmt.Sprintf("c%d-", p.idx)
	lastSeq, lastID := int64(-1), ""
	for r.runCtx.Err() == nil {
		opts := client.SubscribeOptions{}
		resuming := resume && lastID != ""
		if resuming {
			opts.Since = lastID
		} else {
			lastSeq = -1
		}
		// The subscription lives as long as its context: the harness's.
		sub, err := p.ch.Subscribe(r.hardCtx, opts)
		if err != nil {
			r.errs.add("channels", "subscribe %s: %v", p.ch.Path(), err)
			select {
			case <-r.runCtx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		st.subscriptions.Add(1)
		// Every message whose publish starts from now on must arrive.
		from := p.started.Load()
		first := true
		afterGap := false
		handle := func(m client.ChannelMessage) {
			if m.Gap {
				st.gaps.Add(1)
				afterGap = true
				return
			}
			seq, err := strconv.ParseInt(strings.TrimPrefix(string(m.Data), prefix), 10, 64)
			if err != nil || !strings.HasPrefix(string(m.Data), prefix) {
				r.errs.add("channels", "%s: unexpected message %.40q", p.ch.Path(), m.Data)
				return
			}
			st.delivered.Add(1)
			switch {
			case seq <= lastSeq:
				st.duplicated.Add(1)
				r.errs.add("channels", "%s: message %d after %d", p.ch.Path(), seq, lastSeq)
				return
			case afterGap:
				// The server said some were missed.
			case first && !resuming:
				if seq > from {
					if n := p.lostBetween(from, seq); n > 0 {
						st.lost.Add(n)
						r.errs.add("channels", "%s: fresh subscriber's first message is %d, published from %d on", p.ch.Path(), seq, from)
					}
				}
			case seq > lastSeq+1:
				if n := p.lostBetween(lastSeq+1, seq); n > 0 {
					st.lost.Add(n)
					r.errs.add("channels", "%s: message %d after %d (resumed: %v)", p.ch.Path(), seq, lastSeq, resuming && first)
				}
			}
			first, afterGap = false, false
			lastSeq, lastID = seq, m.ID
		}
		life := time.NewTimer(time.Duration(10+rng.IntN(30)) * time.Second)
		open := true
	read:
		for {
			select {
			case m, ok := <-sub.Messages():
				if !ok {
					open = false
					break read
				}
				handle(m)
			case <-life.C:
				break read
			case <-r.runCtx.Done():
				break read
			}
		}
		life.Stop()
		if !open {
			st.dropped.Add(1)
			r.errs.add("channels", "%s: subscription ended by itself: %v", p.ch.Path(), sub.Err())
			sub.Close()
			continue
		}
		// Before leaving: everything answered by now must arrive.
		need := p.done.Load() - 1
		if need >= from || resuming {
			timeout := time.NewTimer(10 * time.Second)
		wait:
			for lastSeq < need {
				select {
				case m, ok := <-sub.Messages():
					if !ok {
						open = false
						break wait
					}
					handle(m)
				case <-timeout.C:
					break wait
				}
			}
			timeout.Stop()
			if lastSeq < need {
				lo := lastSeq + 1
				if !resuming {
					lo = max(lo, from)
				}
				if n := p.lostBetween(lo, need+1); n > 0 {
					st.lost.Add(n)
					r.errs.add("channels", "%s: messages up to %d answered, %d was the last received (open: %v)", p.ch.Path(), need, lastSeq, open)
				}
			}
		}
		sub.Close()
	}
}

// --- relay and expose

// soakBackend serves the relay and expose checks: /echo answers the
// request body, /bytes?n=N&seed=S answers N bytes of a pattern, /ready
// answers "ok".
var soakBackend = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/echo":
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	case "/bytes":
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		seed, _ := strconv.Atoi(r.URL.Query().Get("seed"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(soakPattern(n, seed))
	case "/ready":
		io.WriteString(w, "ok")
	default:
		http.NotFound(w, r)
	}
})

func soakPattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed + i*7 + i>>8)
	}
	return b
}

// waitRelay waits until a request reaches the backend through the relay.
func (r *soakRun) waitRelay() error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := r.reqCtx()
		req, _ := http.NewRequestWithContext(ctx, "GET", r.base+"/client/soak/ready", nil)
		err := expect(r.hc, req, 200)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relay not ready within 30s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startChecked runs workers sending paced requests to the backend behind
// base (with Host host when set), alternating echoed uploads and generated
// downloads of 1 byte to 64 KiB, each body checked.
func (r *soakRun) startChecked(wg *sync.WaitGroup, area, base, host string, workers int, rate float64) *atomic.Int64 {
	var ok atomic.Int64
	for w := range workers {
		rng := rand.New(rand.NewPCG(uint64(len(area)), uint64(w)))
		wg.Go(func() {
			paced(r.runCtx, rate, func(seq int) {
				n := 1 + rng.IntN(64<<10)
				var req *http.Request
				var want []byte
				ctx, cancel := r.reqCtx()
				defer cancel()
				if seq%2 == 0 {
					want = make([]byte, n)
					for i := range want {
						want[i] = byte(rng.Uint32())
					}
					req, _ = http.NewRequestWithContext(ctx, "POST", base+"/echo", bytes.NewReader(want))
					req.Header.Set("Content-Type", "application/octet-stream")
				} else {
					seed := rng.IntN(256)
					want = soakPattern(n, seed)
					req, _ = http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/bytes?n=%d&seed=%d", base, n, seed), nil)
				}
				if host != "" {
					req.Host = host
				}
				resp, err := r.hc.Do(req)
				if err != nil {
					r.errs.add(area, "%s %s: %v", req.Method, req.URL.Path, err)
					return
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case err != nil:
					r.errs.add(area, "%s %s: reading the answer: %v", req.Method, req.URL.Path, err)
				case resp.StatusCode != 200:
					r.errs.add(area, "%s %s: %d %.80q", req.Method, req.URL.Path, resp.StatusCode, got)
				case !bytes.Equal(got, want):
					r.errs.add(area, "%s %s: %d bytes back, %d expected, or different", req.Method, req.URL.Path, len(got), len(want))
				default:
					ok.Add(1)
				}
			})
		})
	}
	return &ok
}

// --- the report

type soakReport struct {
	d, loadTime, drainTime, warmup time.Duration
	idle                           soakSample
	samples                        []soakSample
	tunnels                        []*soakTunnel
	inbox                          *soakInbox
	chans                          *soakChanStats
	relayOps, exposeOps            int64
	counters                       map[string]float64
	counterDetail                  []string
	logWarns                       int
	stopTime                       time.Duration
	errs                           *soakErrors
}

// trend is what flatness is judged on for one series.
type trend struct {
	warm, last, max, slope, growth, allowed float64
	flat                                    bool
}

// judge compares the last sample with the first judged one (at or after
// the warm-up) and fits a least-squares line over the judged samples: both
// the last sample's rise and the line's rise over the judged time must
// stay within rel of the warm-up value plus slack.
func judge(samples []soakSample, warmup time.Duration, value func(soakSample) float64, rel, slack float64) (trend, bool) {
	var judged []soakSample
	for _, s := range samples {
		if s.at >= warmup {
			judged = append(judged, s)
		}
	}
	if len(judged) < 2 {
		return trend{}, false
	}
	var t trend
	t.warm, t.last = value(judged[0]), value(judged[len(judged)-1])
	var sx, sy, sxx, sxy float64
	for _, s := range judged {
		x, y := s.at.Seconds(), value(s)
		t.max = math.Max(t.max, y)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	n := float64(len(judged))
	if den := n*sxx - sx*sx; den > 0 {
		t.slope = (n*sxy - sx*sy) / den
	}
	span := (judged[len(judged)-1].at - judged[0].at).Seconds()
	t.growth = t.slope * span
	t.allowed = t.warm*rel + slack
	t.flat = t.last-t.warm <= t.allowed && t.growth <= t.allowed
	return t, true
}

func (rep *soakReport) print(w io.Writer, md bool) ([]Figure, bool) {
	ok := true
	var created, delivered, lost, redelivered, duplicated, misordered, replies int
	for _, t := range rep.tunnels {
		c, d, l := t.counts()
		t.mu.Lock()
		created, delivered, lost = created+c, delivered+d, lost+l
		redelivered, duplicated, misordered, replies = redelivered+t.redelivered, duplicated+t.duplicated, misordered+t.misordered, replies+t.replies
		t.mu.Unlock()
	}
	copies, acks := rep.inbox.missing()
	rep.inbox.mu.Lock()
	ib := struct{ sends, receives, delivered, acks, dup, stray int }{rep.inbox.sends, rep.inbox.receives, rep.inbox.delivered, rep.inbox.acks, rep.inbox.duplicated, rep.inbox.stray}
	rep.inbox.mu.Unlock()
	ch := rep.chans

	for name, v := range rep.counters {
		if v != 0 {
			ok = false
			rep.errs.add("server", "%s = %g, want 0", name, v)
		}
	}

	type line struct {
		capability, operations string
		errors                 int
		lost, duplicated       int64
		notes                  string
	}
	lines := []line{
		{"tunnels", fmt.Sprintf("%d messages sent (201), %d deliveries, %d replies", created, delivered, replies), rep.errs.count("tunnels"),
			int64(lost), int64(duplicated + misordered), fmt.Sprintf("%d tunnels (3 pending+ack, 2 long-poll, 2 plain, 1 reply); %d pending re-deliveries (allowed)", len(rep.tunnels), redelivered)},
		{"inbox", fmt.Sprintf("%d sends/exchanges, %d receives, %d copies and %d acks received", ib.sends, ib.receives, ib.delivered, ib.acks), rep.errs.count("inbox"),
			int64(copies + acks), int64(ib.dup + ib.stray), fmt.Sprintf("%d actors, half sending by exchange; lost counts copies and acks", soakInboxActors)},
		{"channels", fmt.Sprintf("%d subscriptions, %d messages received", ch.subscriptions.Load(), ch.delivered.Load()), rep.errs.count("channels"),
			ch.lost.Load(), ch.duplicated.Load(), fmt.Sprintf("%d channels (1 published by websocket, the others by POST) x %d subscribers; %d gaps signalled, %d subscriptions dropped", soakChannels, soakSubscribers, ch.gaps.Load(), ch.dropped.Load())},
		{"relay", fmt.Sprintf("%d requests", rep.relayOps), rep.errs.count("relay"), 0, 0, "bodies checked byte for byte"},
		{"expose", fmt.Sprintf("%d requests", rep.exposeOps), rep.errs.count("expose"), 0, 0, "bodies checked byte for byte"},
		{"server", "", rep.errs.count("server") + rep.errs.count("metrics"), 0, 0, fmt.Sprintf("exit 0 after SIGTERM (in %v) and no error in its log (%d warnings) checked", rep.stopTime.Round(time.Millisecond), rep.logWarns)},
	}
	for _, l := range lines {
		if l.errors > 0 || l.lost > 0 || l.duplicated > 0 {
			ok = false
		}
	}

	rss, okR := judge(rep.samples, rep.warmup, func(s soakSample) float64 { return s.rss }, soakFlatRel, soakRSSSlack)
	gor, okG := judge(rep.samples, rep.warmup, func(s soakSample) float64 { return s.goroutines }, soakFlatRel, soakGoroutineSlack)
	if !okR || !okG {
		ok = false
		rep.errs.add("server", "fewer than 2 samples after the warm-up of %v: run longer", rep.warmup)
	}
	if !rss.flat || !gor.flat {
		ok = false
	}

	fmt.Fprintf(w, "\nSoak: %v of load, then %v of draining; warm-up %v, a sample every %v\n\n", rep.loadTime.Round(time.Second), rep.drainTime.Round(100*time.Millisecond), rep.warmup, soakSampleEvery)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if md {
		fmt.Fprintln(w, "| capability | operations | errors | lost | duplicated or misordered | notes |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|")
	} else {
		fmt.Fprintln(tw, "capability\toperations\terrors\tlost\tdup/misordered\tnotes")
	}
	for _, l := range lines {
		if md {
			fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %s |\n", l.capability, l.operations, l.errors, l.lost, l.duplicated, l.notes)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", l.capability, l.operations, l.errors, l.lost, l.duplicated, l.notes)
		}
	}
	tw.Flush()
	fmt.Fprintln(w)

	verdict := func(t trend) string {
		if t.flat {
			return "flat"
		}
		return "GROWING"
	}
	mb := func(v float64) string { return fmt.Sprintf("%.1f MB", v/(1<<20)) }
	if md {
		fmt.Fprintln(w, "| server | idle (before load) | after warm-up | last | max | trend over the run | allowed rise | |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
		fmt.Fprintf(w, "| RSS | %s | %s | %s | %s | %+.2f MB | %s | %s |\n", mb(rep.idle.rss), mb(rss.warm), mb(rss.last), mb(rss.max), rss.growth/(1<<20), mb(rss.allowed), verdict(rss))
		fmt.Fprintf(w, "| goroutines | %.0f | %.0f | %.0f | %.0f | %+.1f | %.0f | %s |\n", rep.idle.goroutines, gor.warm, gor.last, gor.max, gor.growth, gor.allowed, verdict(gor))
	} else {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "server\tidle\tafter warm-up\tlast\tmax\ttrend over the run\tallowed rise\t")
		fmt.Fprintf(tw, "RSS\t%s\t%s\t%s\t%s\t%+.2f MB\t%s\t%s\n", mb(rep.idle.rss), mb(rss.warm), mb(rss.last), mb(rss.max), rss.growth/(1<<20), mb(rss.allowed), verdict(rss))
		fmt.Fprintf(tw, "goroutines\t%.0f\t%.0f\t%.0f\t%.0f\t%+.1f\t%.0f\t%s\n", rep.idle.goroutines, gor.warm, gor.last, gor.max, gor.growth, gor.allowed, verdict(gor))
		tw.Flush()
	}
	fmt.Fprintf(w, "\nflat: the last sample and the least-squares trend over the samples from the warm-up on each rise by at most %.0f%% of the warm-up value plus %d MB (RSS) or %d (goroutines)\n",
		soakFlatRel*100, soakRSSSlack>>20, soakGoroutineSlack)
	fmt.Fprintln(w, "\nsamples (t: RSS MB / goroutines):")
	var sb strings.Builder
	for i, s := range rep.samples {
		fmt.Fprintf(&sb, "%v: %.1f/%.0f", s.at.Round(time.Second), s.rss/(1<<20), s.goroutines)
		if i%6 == 5 || i == len(rep.samples)-1 {
			fmt.Fprintln(w, "  "+sb.String())
			sb.Reset()
		} else {
			sb.WriteString(", ")
		}
	}
	names := make([]string, 0, len(rep.counters))
	for name := range rep.counters {
		names = append(names, name)
	}
	slices.Sort(names)
	fmt.Fprint(w, "\nserver counters that must stay 0:")
	for _, name := range names {
		fmt.Fprintf(w, " %s=%g", name, rep.counters[name])
	}
	fmt.Fprintln(w)
	for _, d := range rep.counterDetail {
		fmt.Fprintln(w, "  "+d)
	}
	if n := rep.errs.total(); n > 0 {
		ok = false
		fmt.Fprintf(w, "\n%d errors; the first:\n", n)
		rep.errs.mu.Lock()
		for _, e := range rep.errs.first {
			fmt.Fprintln(w, "  "+e)
		}
		rep.errs.mu.Unlock()
	}
	result := "PASSED"
	if !ok {
		result = "FAILED"
	}
	fmt.Fprintf(w, "\nsoak %s\n\n", result)

	figs := []Figure{
		{Name: "tunnel messages sent and delivered", Unit: "msgs", Value: float64(created)},
		{Name: "inbox copies and acks received", Unit: "msgs", Value: float64(ib.delivered + ib.acks)},
		{Name: "channel messages received", Unit: "msgs", Value: float64(ch.delivered.Load())},
		{Name: "relay requests checked", Unit: "req", Value: float64(rep.relayOps)},
		{Name: "expose requests checked", Unit: "req", Value: float64(rep.exposeOps)},
		{Name: "errors", Unit: "", Value: float64(rep.errs.total()), LowerIsBetter: true},
		{Name: "lost or duplicated", Unit: "msgs", Value: float64(int64(lost+copies+acks+duplicated+misordered+ib.dup+ib.stray) + ch.lost.Load() + ch.duplicated.Load()), LowerIsBetter: true},
		{Name: "RSS after warm-up", Unit: "MB", Value: rss.warm / (1 << 20), LowerIsBetter: true},
		{Name: "RSS last", Unit: "MB", Value: rss.last / (1 << 20), LowerIsBetter: true},
		{Name: "RSS max", Unit: "MB", Value: rss.max / (1 << 20), LowerIsBetter: true},
		{Name: "goroutines after warm-up", Unit: "", Value: gor.warm, LowerIsBetter: true},
		{Name: "goroutines last", Unit: "", Value: gor.last, LowerIsBetter: true},
		{Name: "goroutines max", Unit: "", Value: gor.max, LowerIsBetter: true},
	}
	return figs, ok
}
