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
//     client (internal/relay/gcr/client); user requests under /client/NAME/ with echoed or
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
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/postern/postern/client"
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
	agents, err := r.startAgents(ctx, backendURL)
	if err != nil {
		return nil, err
	}
	defer agents.stop()
	if err := r.waitRelay(); err != nil {
		return nil, err
	}
	rep, err := r.load(ctx, o.Soak, srv)
	if err != nil {
		return nil, err
	}
	agents.stop()
	agents.check(&r.errs)
	r.stopServer(srv, rep)

	figs, ok := rep.print(os.Stdout, o.Markdown)
	if !ok {
		return figs, errors.New("soak failed: see the report")
	}
	failed = false
	return figs, nil
}

// load runs every capability's load for d, then lets the consumers drain
// and reads the server's counters of trouble.
func (r *soakRun) load(ctx context.Context, d time.Duration, srv *soakServer) (*soakReport, error) {
	idle, err := r.sample(0)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	runCtx, stopLoad := context.WithTimeout(ctx, d)
	defer stopLoad()
	r.runCtx = runCtx
	sampled := r.sampleUnderLoad(ctx, start, d)

	var load sync.WaitGroup
	tunnels := r.startTunnels(&load)
	inbox := r.startInbox(&load)
	chans := r.startChannels(&load)
	relayOps := r.startChecked(&load, "relay", srv.base+"/client/soak", "", soakRelayWorkers, soakRelayRate)
	exposeOps := r.startChecked(&load, "expose", srv.base, "soakx.localhost"+r.port, soakExpWorkers, soakExposeRate)

	<-runCtx.Done()
	samples := <-sampled
	loadTime := time.Since(start)
	load.Wait() // producers stopped, consumers drained (or gave up)
	drainTime := time.Since(start) - loadTime

	counters, detail, err := r.troubleCounters()
	if err != nil {
		r.errs.add("metrics", "%v", err)
	}
	return &soakReport{
		d: d, loadTime: loadTime, drainTime: drainTime, idle: idle, samples: samples,
		warmup: min(soakWarmup, d/4), tunnels: tunnels, inbox: inbox, chans: chans,
		relayOps: relayOps.Load(), exposeOps: exposeOps.Load(), counters: counters, counterDetail: detail,
		errs: &r.errs,
	}, nil
}

// sampleUnderLoad samples the server every soakSampleEvery from start,
// and a last time a second before d, so that every sample is taken under
// load; the samples come on the channel when it is done.
func (r *soakRun) sampleUnderLoad(ctx context.Context, start time.Time, d time.Duration) <-chan []soakSample {
	out := make(chan []soakSample, 1)
	go func() {
		var samples []soakSample
		defer func() { out <- samples }()
		for at := soakSampleEvery; ; at += soakSampleEvery {
			final := at >= d-time.Second
			if final {
				at = d - time.Second
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
	return out
}

// stopServer stops the server with SIGTERM, which must end in exit 0,
// and notes its log's errors and warnings.
func (r *soakRun) stopServer(srv *soakServer, rep *soakReport) {
	stopStart := time.Now()
	exit, err := srv.stop()
	rep.stopTime = time.Since(stopStart)
	if err != nil {
		r.errs.add("server", "stop: %v", err)
	} else if exit != 0 {
		r.errs.add("server", "exited %d after SIGTERM, want 0", exit)
	}
	logErrors, logWarns, firstLog := srv.logCounts()
	if logErrors > 0 {
		r.errs.add("server", "logged %d errors; first: %s", logErrors, firstLog)
	}
	rep.logWarns = logWarns
}
