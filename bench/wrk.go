package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Tunnel produce and expose measured as issue 20 measured the originals
// side by side: loaded by wrk, a C load generator that spent 17-19 µs of
// CPU per request in the quiet run of 2026-12-07, where the harness's Go
// client spent about 32 µs (52 µs for it and baseline-hello in one
// process, less the handler's 20 µs on its own) on the same two cores. The tunnel servers run in child processes, as deployed; the
// expose path's run in this process, whose CPU is then all theirs. The
// tunnel, tunnel/file and expose scenarios keep the Go client: the two
// views are printed apart, and neither replaces the other.
func init() {
	register(Scenario{
		Name:     "tunnel/wrk",
		Baseline: "baseline-hello in a child process, loaded by wrk with the same connections and requests, in alternating slices (needs wrk on PATH); rows naming baseline-store: the plain handler that reads, keeps and answers like a produce (store.go), measured the same way",
		Run:      runTunnelWrk,
	})
	register(Scenario{
		Name:     "expose/wrk",
		Baseline: "httputil.ReverseProxy to the same backend, loaded by wrk with the same connections, in alternating slices (needs wrk on PATH)",
		Run:      runExposeWrk,
	})
}

// wrkProduceScript posts benchBody (text/plain) to eight tunnels in turn,
// the tunnel scenario's requests.
const wrkProduceScript = `wrk.method = "POST"
wrk.body = string.rep("x", %d)
wrk.headers["Content-Type"] = "text/plain"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/t/load-" .. (n %% 8))
end
`

// wrkResult is one wrk run against one server.
type wrkResult struct {
	requests  int64
	elapsed   time.Duration
	p99       time.Duration
	serverCPU time.Duration // the server side's CPU over the run
	clientCPU time.Duration // wrk's own
}

func (r wrkResult) add(o wrkResult) wrkResult {
	return wrkResult{
		requests:  r.requests + o.requests,
		elapsed:   r.elapsed + o.elapsed,
		p99:       max(r.p99, o.p99),
		serverCPU: r.serverCPU + o.serverCPU,
		clientCPU: r.clientCPU + o.clientCPU,
	}
}

func (r wrkResult) rate() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// perReq is CPU per request in µs.
func perReq(cpu time.Duration, requests int64) float64 {
	return float64(cpu) / float64(time.Microsecond) / float64(requests)
}

func runTunnelWrk(ctx context.Context, o Options) ([]Figure, error) {
	bin, err := lookWrk()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "postern-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "produce.lua")
	if err := os.WriteFile(script, fmt.Appendf(nil, wrkProduceScript, len(benchBody)), 0o600); err != nil {
		return nil, err
	}
	servers := []struct {
		name, kind string
		env        []string
	}{
		{"baseline-hello", "hello", nil},
		{"memory engine", "tunnel", nil},
		{"file engine", "tunnel", []string{childStoreEnv + "=file:" + filepath.Join(dir, "data")}},
		{"baseline-store", "store", nil},
	}
	children := make([]*child, len(servers))
	defer func() {
		for _, c := range children {
			if c != nil {
				c.stop()
			}
		}
	}()
	for i, s := range servers {
		if children[i], err = startChild(s.kind, s.env...); err != nil {
			return nil, err
		}
	}
	targets := make([]wrkTarget, len(children))
	for i, c := range children {
		targets[i] = wrkTarget{name: servers[i].name, url: c.base + "/", script: script, cpu: c.cpu}
	}
	res, err := wrkAlternating(ctx, bin, o, targets)
	if err != nil {
		return nil, err
	}
	hello, mem, file, floor := res[0], res[1], res[2], res[3]
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		// Issue 20's produce bars, in its own method: 0.85x the cheapest
		// handler on the memory engine, 0.6x on the default file engine.
		{Name: "produce req/s, memory engine (wrk)", Unit: "req/s", Value: mem.rate(), Baseline: hello.rate(), Goal: 0.85},
		{Name: "produce req/s, file engine (wrk)", Unit: "req/s", Value: file.rate(), Baseline: hello.rate(), Goal: 0.6},
		{Name: "produce p99, file engine (wrk, worst slice)", Unit: "ms", Value: ms(file.p99), Baseline: ms(hello.p99), LowerIsBetter: true},
		{Name: "server CPU per produce, memory engine", Unit: "µs", Value: perReq(mem.serverCPU, mem.requests), Baseline: perReq(hello.serverCPU, hello.requests), LowerIsBetter: true},
		{Name: "server CPU per produce, file engine", Unit: "µs", Value: perReq(file.serverCPU, file.requests), Baseline: perReq(hello.serverCPU, hello.requests), LowerIsBetter: true},
		{Name: "wrk CPU per request, file engine", Unit: "µs", Value: perReq(file.clientCPU, file.requests), Baseline: perReq(hello.clientCPU, hello.requests), LowerIsBetter: true},
		// The floor of any handler that stores what it is sent (store.go),
		// and the memory engine against it.
		{Name: "baseline-store req/s (wrk)", Unit: "req/s", Value: floor.rate(), Baseline: hello.rate()},
		{Name: "server CPU per request, baseline-store", Unit: "µs", Value: perReq(floor.serverCPU, floor.requests), Baseline: perReq(hello.serverCPU, hello.requests), LowerIsBetter: true},
		{Name: "produce req/s, memory engine vs baseline-store (wrk)", Unit: "req/s", Value: mem.rate(), Baseline: floor.rate()},
		{Name: "server CPU per produce, memory engine vs baseline-store", Unit: "µs", Value: perReq(mem.serverCPU, mem.requests), Baseline: perReq(floor.serverCPU, floor.requests), LowerIsBetter: true},
	}, nil
}

// wrkTarget is one server a wrk scenario loads.
type wrkTarget struct {
	name   string
	url    string
	host   string // the Host header, when not empty
	script string // wrk's Lua script, when not empty
	// cpu is the CPU time the server side has used so far.
	cpu func() (time.Duration, error)
}

// wrkAlternating loads each target in two slices of half o.Duration (wrk
// counts whole seconds), in the order 0, 1, ..., n-1, n-1, ..., 0, so that
// the machine's load weighs on all alike, and sums each target's slices.
func wrkAlternating(ctx context.Context, bin string, o Options, targets []wrkTarget) ([]wrkResult, error) {
	slice := max(time.Second, (o.Duration / 2).Round(time.Second))
	res := make([]wrkResult, len(targets))
	order := make([]int, 0, 2*len(targets))
	for i := range targets {
		order = append(order, i)
	}
	for i := range targets {
		order = append(order, len(targets)-1-i)
	}
	for _, i := range order {
		r, err := runWrk(ctx, bin, targets[i], o.Conns, slice)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", targets[i].name, err)
		}
		res[i] = res[i].add(r)
	}
	return res, nil
}

// runWrk loads t with wrk for d (whole seconds) and reads its report.
func runWrk(ctx context.Context, bin string, t wrkTarget, conns int, d time.Duration) (wrkResult, error) {
	cpu0, err := t.cpu()
	if err != nil {
		return wrkResult{}, err
	}
	args := []string{"-t2", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d/time.Second)) + "s", "--latency"}
	if t.script != "" {
		args = append(args, "-s", t.script)
	}
	if t.host != "" {
		args = append(args, "-H", "Host: "+t.host)
	}
	cmd := exec.CommandContext(ctx, bin, append(args, t.url)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v: %s", err, strings.TrimSpace(out.String()))
	}
	cpu1, err := t.cpu()
	if err != nil {
		return wrkResult{}, err
	}
	r, err := parseWrk(out.Bytes())
	if err != nil {
		return wrkResult{}, err
	}
	r.serverCPU = cpu1 - cpu0
	r.clientCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return r, nil
}

// runExposeWrk is the expose scenario's request rate loaded by wrk. The
// servers run in this process, whose CPU is then all theirs: the client
// is another process.
func runExposeWrk(ctx context.Context, o Options) ([]Figure, error) {
	bin, err := lookWrk()
	if err != nil {
		return nil, err
	}
	p, err := startExposePath(ctx, o.Conns)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	own := func() (time.Duration, error) { return ownCPU(), nil }
	res, err := wrkAlternating(ctx, bin, o, []wrkTarget{
		{name: "baseline", url: p.proxyURL + "/", cpu: own},
		{name: "baseline-hello", url: p.helloURL + "/", cpu: own},
		{name: "expose", url: p.nodeURL + "/", host: p.host, cpu: own},
	})
	if err != nil {
		return nil, err
	}
	proxy, hello, got := res[0], res[1], res[2]
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		// Issue 20, in its own method: 0.85x a plain ReverseProxy with 32
		// and with 8 connections.
		{Name: "native req/s (wrk)", Unit: "req/s", Value: got.rate(), Baseline: proxy.rate(), Goal: 0.85, Hello: hello.rate()},
		{Name: "server-side CPU per req (backend, node and agent; backend and proxy)", Unit: "µs", Value: perReq(got.serverCPU, got.requests), Baseline: perReq(proxy.serverCPU, proxy.requests), LowerIsBetter: true},
		{Name: "native p99 (wrk, worst slice)", Unit: "ms", Value: ms(got.p99), Baseline: ms(proxy.p99), LowerIsBetter: true},
	}, nil
}

// lookWrk finds wrk on PATH.
func lookWrk() (string, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		return "", errors.New("wrk is not on PATH: install it (Debian: apt-get install wrk), or leave the /wrk scenarios out with -run")
	}
	return bin, nil
}

var (
	wrkTotal  = regexp.MustCompile(`^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m),`)
	wrkP99    = regexp.MustCompile(`^\s*99%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	wrkBad    = regexp.MustCompile(`^\s*Non-2xx or 3xx responses: (\d+)`)
	wrkErrors = regexp.MustCompile(`^\s*Socket errors: (.*)$`)
)

// parseWrk reads wrk's report (run with --latency). Any answer other than
// 2xx or 3xx, and any socket error, fails the run.
func parseWrk(out []byte) (wrkResult, error) {
	var r wrkResult
	dur := func(v, unit string) time.Duration {
		f, _ := strconv.ParseFloat(v, 64)
		scale := map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9}[unit]
		return time.Duration(f * scale)
	}
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		line := s.Text()
		if m := wrkTotal.FindStringSubmatch(line); m != nil {
			r.requests, _ = strconv.ParseInt(m[1], 10, 64)
			r.elapsed = dur(m[2], m[3])
		} else if m := wrkP99.FindStringSubmatch(line); m != nil {
			r.p99 = dur(m[1], m[2])
		} else if m := wrkBad.FindStringSubmatch(line); m != nil {
			return r, fmt.Errorf("wrk: %s answers were not 2xx or 3xx", m[1])
		} else if m := wrkErrors.FindStringSubmatch(line); m != nil {
			return r, fmt.Errorf("wrk: socket errors: %s", m[1])
		}
	}
	if r.requests == 0 {
		return r, fmt.Errorf("wrk made no request: %s", strings.TrimSpace(string(out)))
	}
	return r, nil
}
