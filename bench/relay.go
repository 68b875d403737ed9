package main

// Relay scenarios, measured as deployed: `postern serve` and `postern relay`
// (the relay agent) each run as a process of their own, the backend, the
// baselines and the proxy chain run in child processes too (the harness
// started again, as for channels), and the harness process only generates
// the load. CPU figures add up every process of the path measured.
//
// The postern processes are this harness running postern's command line
// (internal/cli, exactly what cmd/postern runs), or with -postern the
// binary named. -against measures a second postern binary (a build of
// another commit) in the same rounds, for before/after ratios on a noisy
// machine. -profile writes CPU and allocation profiles of the serve and
// relay processes during the relay phases (not with -postern).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/postern/postern/internal/cli"
)

func init() {
	if os.Getenv(asPosternEnv) != "" {
		os.Exit(runAsPostern())
	}
	register(Scenario{
		Name: "relay",
		Baseline: "the same backend reached directly, same client, same connections; " +
			"the 'vs chain' figure: through 3 chained httputil.ReverseProxy in one process, the same 4 HTTP exchanges per request as the protocol",
		Run: runRelay,
	})
	register(Scenario{
		Name: "relay-stream",
		Baseline: "the same download straight from the backend, same client; " +
			"the 'vs chain' figure: through 2 chained httputil.ReverseProxy in one process, the same 3 transfers of every byte as the protocol",
		Run: runRelayStream,
	})
}

var (
	// profileDir, when set, receives CPU profiles: of the harness process
	// during the expose scenario's postern phase (expose.go), and of the
	// postern serve and relay processes during the relay phases (with
	// allocation profiles), one file per scenario, process and round (go
	// tool pprof merges several).
	profileDir  = flag.String("profile", "", "write CPU and allocation profiles of the relay and expose scenarios' postern phases to this `dir`")
	posternBin  = flag.String("postern", "", "relay scenarios: run this postern `binary` as server and agent (default: the harness runs postern's command line itself)")
	profileRate = flag.Int("profile-rate", 0, "with -profile: runtime.MemProfileRate of the postern processes (16384: allocation profiles fine enough for one phase, at some CPU cost; 0: Go's default)")
	relayArgs   = flag.String("relay-args", "", "relay scenarios: more `flags` for the measured postern relay (space-separated), e.g. \"--pending-requests 1\"")
	againstBin  = flag.String("against", "", "relay scenarios: also measure this other postern `binary` (another commit's build) in the same rounds, as the figures 'vs -against'")
)

var profileRounds = map[string]int{}

// profiled runs f, under a CPU profile of this process written to
// <profile>/<name>-<round>.pprof when -profile is set.
func profiled(name string, f func() error) error {
	if *profileDir == "" {
		return f()
	}
	profileRounds[name]++
	out, err := os.Create(filepath.Join(*profileDir, fmt.Sprintf("%s-%d.pprof", name, profileRounds[name])))
	if err != nil {
		return err
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	return f()
}

// labelPart labels the calling goroutine, and the goroutines it starts,
// as part of the setup named part.
func labelPart(ctx context.Context, part string) {
	pprof.SetGoroutineLabels(pprof.WithLabels(ctx, pprof.Labels("part", part)))
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measured is a closed-loop phase with the CPU time this process used per
// operation.
func measured(ctx context.Context, conns int, d time.Duration, op func(ctx context.Context, worker, seq int) error) (LoadResult, float64, error) {
	c0 := cpuTime()
	r, err := closedLoop(ctx, conns, d, op)
	us := 0.0
	if r.Ops > 0 {
		us = float64(cpuTime()-c0) / float64(time.Microsecond) / float64(r.Ops)
	}
	return r, us, err
}

// readAll reads r to its end with reads of len(buf) and returns how many
// bytes it read: a download client that reads in large blocks.
// (io.CopyBuffer to io.Discard would ignore buf: io.Discard reads through
// its own 8 KiB buffer.)
func readAll(r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// --- postern processes

const (
	// asPosternEnv makes the harness, started again, run postern's
	// command line with its arguments, as cmd/postern does.
	asPosternEnv = "POSTERN_BENCH_AS_POSTERN"
	// posternProfileEnv, in such a process, is the file prefix of the
	// profiles it writes between SIGUSR1 and SIGUSR2.
	posternProfileEnv = "POSTERN_BENCH_PROFILE_PREFIX"
	// posternMemRateEnv sets its runtime.MemProfileRate (-profile-rate).
	posternMemRateEnv = "POSTERN_BENCH_MEMPROFILERATE"
	// profileStarted and profileStopped are what it prints on stderr once
	// it did.
	profileStarted = "bench: profile started"
	profileStopped = "bench: profile written"
)

// runAsPostern is cmd/postern's main, with profiles on signals when asked.
func runAsPostern() int {
	if prefix := os.Getenv(posternProfileEnv); prefix != "" {
		if r, err := strconv.Atoi(os.Getenv(posternMemRateEnv)); err == nil {
			runtime.MemProfileRate = r
		}
		go profileOnSignals(prefix)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	args := os.Args[1:]
	return cli.Main(ctx, args, cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
}

// profileOnSignals starts a CPU profile at each SIGUSR1 and at the next
// SIGUSR2 writes it, with the allocations made in between (an allocs
// profile at each end: go tool pprof -diff_base <n>.allocs0 <n>.allocs).
func profileOnSignals(prefix string) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	var cpu *os.File
	n := 0
	writeAllocs := func(name string) {
		if f, err := os.Create(name); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
	for s := range sig {
		switch {
		case s == syscall.SIGUSR1 && cpu == nil:
			n++
			writeAllocs(fmt.Sprintf("%s-%d.allocs0.pprof", prefix, n))
			f, err := os.Create(fmt.Sprintf("%s-%d.cpu.pprof", prefix, n))
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench:", err)
				continue
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				fmt.Fprintln(os.Stderr, "bench:", err)
				f.Close()
				continue
			}
			cpu = f
			fmt.Fprintln(os.Stderr, profileStarted)
		case s == syscall.SIGUSR2 && cpu != nil:
			pprof.StopCPUProfile()
			cpu.Close()
			cpu = nil
			writeAllocs(fmt.Sprintf("%s-%d.allocs.pprof", prefix, n))
			fmt.Fprintln(os.Stderr, profileStopped)
		}
	}
}

// posternProc is a postern process: `postern serve` or `postern relay`.
type posternProc struct {
	cmd     *exec.Cmd
	stdout  *bufio.Reader
	lines   chan string // stderr lines the harness waits for
	exited  chan struct{}
	profile bool
}

// listenRE finds the address in the serve banner's first line.
var listenRE = regexp.MustCompile(`postern (?:\S+ )?listening on (http://\S+)`)

// startPostern runs postern with args: bin, or this harness as postern
// when bin is empty. profile names the profiles' file prefix (none when
// empty; only for the harness as postern).
func startPostern(bin, profile string, args ...string) (*posternProc, error) {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POSTERN_") {
			env = append(env, kv)
		}
	}
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		bin = exe
		env = append(env, asPosternEnv+"=1")
		if profile != "" {
			env = append(env, posternProfileEnv+"="+profile)
			if *profileRate > 0 {
				env = append(env, posternMemRateEnv+"="+strconv.Itoa(*profileRate))
			}
		}
	} else {
		profile = ""
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &posternProc{cmd: cmd, stdout: bufio.NewReader(out), lines: make(chan string, 16), exited: make(chan struct{}), profile: profile != ""}
	logged := make(chan struct{})
	go func() {
		// Lines the harness waits for go to p.lines; the rest (a relay
		// agent's line per request) is read and dropped, as a terminal or
		// a log collector would take it.
		defer close(logged)
		sc := bufio.NewScanner(errPipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if listenRE.MatchString(line) || strings.HasPrefix(line, "bench: ") || strings.Contains(line, "level=ERROR") {
				select {
				case p.lines <- line:
				default:
				}
			}
		}
	}()
	go func() {
		<-logged
		cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// waitLine waits for a stderr line matching re, for 30 s at most.
func (p *posternProc) waitLine(re *regexp.Regexp) (string, error) {
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case l := <-p.lines:
			if re.MatchString(l) {
				return l, nil
			}
		case <-p.exited:
			return "", fmt.Errorf("postern %s exited: %v", p.cmd.Args[1], p.cmd.ProcessState)
		case <-deadline.C:
			return "", fmt.Errorf("postern %s: no line matching %s within 30 s", p.cmd.Args[1], re)
		}
	}
}

// stop sends SIGTERM and waits for the exit (SIGKILL after 30 s).
func (p *posternProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

var (
	startedRE = regexp.MustCompile("^" + regexp.QuoteMeta(profileStarted))
	stoppedRE = regexp.MustCompile("^" + regexp.QuoteMeta(profileStopped))
)

// profileStart and profileStop bracket a profiled phase.
func (p *posternProc) profileStart() error {
	if !p.profile {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGUSR1)
	_, err := p.waitLine(startedRE)
	return err
}

func (p *posternProc) profileStop() error {
	if !p.profile {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGUSR2)
	_, err := p.waitLine(stoppedRE)
	return err
}

// procCPU is the CPU time (user and system) process pid has used, from
// /proc (clock ticks of 10 ms: enough over a phase of seconds).
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	// Fields 14 and 15 (utime, stime); f[0] is field 3.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// relayPath is one path to the backend whose CPU the harness adds up: the
// harness's own and that of the processes listed.
type relayPath struct {
	url  string
	pids []int
}

func (rp relayPath) cpu() time.Duration {
	t := cpuTime()
	for _, pid := range rp.pids {
		if d, err := procCPU(pid); err == nil {
			t += d
		}
	}
	return t
}

// relayDeployment is `postern serve` and `postern relay` serving backend
// under the name "bench".
type relayDeployment struct {
	serve, agent *posternProc
	url          string // the node's base URL
}

// startRelayDeployment starts a node and a relay agent for backend. tag
// names the deployment in profile file names ("" for none).
func startRelayDeployment(ctx context.Context, bin, backend, tag string, agentArgs ...string) (*relayDeployment, error) {
	prefix := func(part string) string {
		if *profileDir == "" || tag == "" {
			return ""
		}
		profileRounds[tag+"-"+part]++
		return filepath.Join(*profileDir, fmt.Sprintf("%s-%s-r%d", tag, part, profileRounds[tag+"-"+part]))
	}
	serve, err := startPostern(bin, prefix("serve"), "serve", "--listen", "127.0.0.1:0", "--store", "memory",
		"--log-format", "text", "--max-connections", "-1", "--max-connections-per-addr", "-1")
	if err != nil {
		return nil, err
	}
	line, err := serve.waitLine(listenRE)
	if err != nil {
		serve.stop()
		return nil, err
	}
	d := &relayDeployment{serve: serve, url: strings.TrimSuffix(listenRE.FindStringSubmatch(line)[1], "/")}
	args := append([]string{"relay", "--server", d.url, "--name", "bench"}, agentArgs...)
	d.agent, err = startPostern(bin, prefix("agent"), append(args, backend)...)
	if err != nil {
		serve.stop()
		return nil, err
	}
	if err := d.ready(ctx); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

// ready waits for the agent's first answer through the node: until a
// poll arrives the node answers 503 at once.
func (d *relayDeployment) ready(ctx context.Context) error {
	c := httpClient(1)
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", d.url+"/client/bench/ready", nil)
		err := expect(c, req, http.StatusOK)
		if err == nil {
			return nil
		}
		var se *statusError
		if !errors.As(err, &se) || se.got != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return fmt.Errorf("relay agent not ready: %w", err)
		}
		select {
		case <-d.agent.exited:
			return fmt.Errorf("postern relay exited: %v", d.agent.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (d *relayDeployment) path() relayPath {
	return relayPath{url: d.url + "/client/bench", pids: []int{d.serve.cmd.Process.Pid, d.agent.cmd.Process.Pid}}
}

func (d *relayDeployment) stop() {
	d.agent.stop()
	d.serve.stop()
}

func (d *relayDeployment) profileStart() error {
	return errors.Join(d.serve.profileStart(), d.agent.profileStart())
}

func (d *relayDeployment) profileStop() error {
	return errors.Join(d.serve.profileStop(), d.agent.profileStop())
}

// --- children: the backend and the proxy chain

const (
	// relayStreamBytes is the size of the one-stream download.
	relayStreamBytes = 200 << 20
	// chainEnv tells a "chain" child its length and target: "3 http://...".
	chainEnv = "POSTERN_BENCH_CHAIN"
)

// relayBackend answers /big with relayStreamBytes in writes of 1 MiB, and
// anything else with a 2-byte body of known length.
func relayBackend() http.Handler {
	block := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	answer := []byte("ok")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path != "/big" {
			w.Header().Set("Content-Length", "2")
			w.Write(answer)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(relayStreamBytes))
		for sent := 0; sent < relayStreamBytes; sent += len(block) {
			if _, err := w.Write(block); err != nil {
				return
			}
		}
	})
}

// proxyChainHandler is the "chain" child's handler: n httputil.ReverseProxy
// in a row (the first is the handler, the others listen on their own
// loopback ports) in front of target, as in chainEnv.
func proxyChainHandler(spec string) (http.Handler, func(), error) {
	ns, target, _ := strings.Cut(spec, " ")
	n, err := strconv.Atoi(ns)
	if err != nil || n < 1 {
		return nil, nil, fmt.Errorf("%s=%q: want \"N URL\"", chainEnv, spec)
	}
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	proxy := func(target string) (http.Handler, error) {
		u, err := url.Parse(target)
		if err != nil {
			return nil, err
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
		return rp, nil
	}
	for range n - 1 {
		h, err := proxy(target)
		if err != nil {
			stop()
			return nil, nil, err
		}
		next, s, err := startHTTP(h)
		if err != nil {
			stop()
			return nil, nil, err
		}
		stops = append(stops, s)
		target = next
	}
	h, err := proxy(target)
	if err != nil {
		stop()
		return nil, nil, err
	}
	return h, stop, nil
}

// childPath is the path through a child process to the backend child.
func childPath(c *child, backend *child) relayPath {
	pids := []int{c.cmd.Process.Pid}
	if backend != nil && backend != c {
		pids = append(pids, backend.cmd.Process.Pid)
	}
	return relayPath{url: c.base, pids: pids}
}

// relayBench is one round's processes: the backend, the paths to it, and
// the postern deployments.
type relayBench struct {
	backend, hello, chain *child
	postern, against      *relayDeployment
}

func (b *relayBench) stop() {
	for _, d := range []*relayDeployment{b.postern, b.against} {
		if d != nil {
			d.stop()
		}
	}
	for _, c := range []*child{b.chain, b.hello, b.backend} {
		if c != nil {
			c.stop()
		}
	}
}

// startRelayBench starts the backend, a chain of chainLen proxies to it,
// baseline-hello when hello is set, and the deployments.
func startRelayBench(ctx context.Context, scenario string, chainLen int, hello bool) (b *relayBench, err error) {
	b = &relayBench{}
	defer func() {
		if err != nil {
			b.stop()
		}
	}()
	if b.backend, err = startChild("relay-backend"); err != nil {
		return nil, err
	}
	if b.chain, err = startChild("chain", chainEnv+"="+strconv.Itoa(chainLen)+" "+b.backend.base); err != nil {
		return nil, err
	}
	if hello {
		if b.hello, err = startChild("hello"); err != nil {
			return nil, err
		}
	}
	if b.postern, err = startRelayDeployment(ctx, *posternBin, b.backend.base, scenario, strings.Fields(*relayArgs)...); err != nil {
		return nil, fmt.Errorf("postern: %w", err)
	}
	if *againstBin != "" {
		if b.against, err = startRelayDeployment(ctx, *againstBin, b.backend.base, ""); err != nil {
			return nil, fmt.Errorf("-against: %w", err)
		}
	}
	return b, nil
}

// pathLoad is a closed-loop phase on one path with the CPU time of all its
// processes per operation.
type pathLoad struct {
	r   LoadResult
	cpu time.Duration
}

func (l pathLoad) rate() float64 { return l.r.Rate() }

func (l pathLoad) cpuPerOp() float64 {
	if l.r.Ops == 0 {
		return 0
	}
	return float64(l.cpu) / float64(time.Microsecond) / float64(l.r.Ops)
}

func (l pathLoad) ms(p float64) float64 {
	return float64(l.r.Percentile(p)) / float64(time.Millisecond)
}

func (l *pathLoad) add(r LoadResult, cpu time.Duration) {
	l.r = merge(l.r, r)
	l.cpu += cpu
}

// runRelay measures small GETs through node and agent against the same
// backend reached directly, baseline-hello and the proxy chain, in
// alternating slices so that the machine's load weighs on all alike.
func runRelay(ctx context.Context, o Options) ([]Figure, error) {
	b, err := startRelayBench(ctx, "relay", 3, true)
	if err != nil {
		return nil, err
	}
	defer b.stop()
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()
	get := func(base string) func(ctx context.Context, w, seq int) error {
		return func(ctx context.Context, w, seq int) error {
			req, _ := http.NewRequestWithContext(ctx, "GET", base+"/items/"+strconv.Itoa(seq), nil)
			return expect(c, req, 200)
		}
	}
	type phase struct {
		name string
		path relayPath
		load pathLoad
		d    *relayDeployment // profiled, when set
	}
	phases := []*phase{
		{name: "direct", path: childPath(b.backend, nil)},
		{name: "baseline-hello", path: childPath(b.hello, nil)},
		{name: "relay", path: b.postern.path(), d: b.postern},
		{name: "chain", path: childPath(b.chain, b.backend)},
	}
	if b.against != nil {
		phases = append(phases, &phase{name: "-against", path: b.against.path()})
	}
	for _, p := range phases {
		// Connections made and pollers parked before anything counts.
		if _, err := closedLoop(ctx, o.Conns, 200*time.Millisecond, get(p.path.url)); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", p.name, err)
		}
	}
	slice := o.Duration / interleavedSlices
	for s := range interleavedSlices {
		// Rotate the order, so that no path always follows the same one.
		for i := range phases {
			p := phases[(i+s)%len(phases)]
			if p.d != nil {
				if err := p.d.profileStart(); err != nil {
					return nil, err
				}
			}
			c0 := p.path.cpu()
			r, err := closedLoop(ctx, o.Conns, slice, get(p.path.url))
			cpu := p.path.cpu() - c0
			if p.d != nil {
				if err := p.d.profileStop(); err != nil {
					return nil, err
				}
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
			p.load.add(r, cpu)
		}
	}
	direct, hello, relayed, chained := phases[0].load, phases[1].load, phases[2].load, phases[3].load
	figs := []Figure{
		{Name: "req/s", Unit: "req/s", Value: relayed.rate(), Baseline: direct.rate(), Goal: 0.25, Hello: hello.rate()},
		{Name: "req/s vs chain", Unit: "req/s", Value: relayed.rate(), Baseline: chained.rate()},
		{Name: "CPU per req, all processes", Unit: "us", Value: relayed.cpuPerOp(), Baseline: direct.cpuPerOp(), LowerIsBetter: true, Hello: hello.cpuPerOp()},
		{Name: "CPU per req vs chain", Unit: "us", Value: relayed.cpuPerOp(), Baseline: chained.cpuPerOp(), LowerIsBetter: true},
		{Name: "p50", Unit: "ms", Value: relayed.ms(50), Baseline: direct.ms(50), LowerIsBetter: true, Hello: hello.ms(50)},
		{Name: "p99", Unit: "ms", Value: relayed.ms(99), Baseline: direct.ms(99), LowerIsBetter: true, Hello: hello.ms(99)},
	}
	if len(phases) > 4 {
		against := phases[4].load
		figs = append(figs,
			Figure{Name: "req/s vs -against", Unit: "req/s", Value: relayed.rate(), Baseline: against.rate()},
			Figure{Name: "-against req/s vs direct", Unit: "req/s", Value: against.rate(), Baseline: direct.rate()},
			Figure{Name: "CPU per req vs -against", Unit: "us", Value: relayed.cpuPerOp(), Baseline: against.cpuPerOp(), LowerIsBetter: true},
			Figure{Name: "p50 vs -against", Unit: "ms", Value: relayed.ms(50), Baseline: against.ms(50), LowerIsBetter: true},
			Figure{Name: "p99 vs -against", Unit: "ms", Value: relayed.ms(99), Baseline: against.ms(99), LowerIsBetter: true},
		)
	}
	return figs, nil
}

// runRelayStream measures one download of relayStreamBytes through node
// and agent against the same download straight from the backend and
// through the proxy chain.
func runRelayStream(ctx context.Context, o Options) ([]Figure, error) {
	b, err := startRelayBench(ctx, "relay-stream", 2, false)
	if err != nil {
		return nil, err
	}
	defer b.stop()
	c := httpClient(1)
	defer c.CloseIdleConnections()
	buf := make([]byte, 1<<20)
	// download returns MB/s and the CPU time of the path's processes per MB.
	download := func(p relayPath) (float64, float64, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", p.url+"/big", nil)
		t0, c0 := time.Now(), p.cpu()
		resp, err := c.Do(req)
		if err != nil {
			return 0, 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, 0, fmt.Errorf("GET %s: %s", req.URL, resp.Status)
		}
		n, err := readAll(resp.Body, buf)
		if err != nil {
			return 0, 0, err
		}
		if n != relayStreamBytes {
			return 0, 0, fmt.Errorf("short download: %d bytes", n)
		}
		el, cpu := time.Since(t0), p.cpu()-c0
		mb := float64(n) / (1 << 20)
		return mb / el.Seconds(), float64(cpu) / float64(time.Microsecond) / mb, nil
	}
	type phase struct {
		name     string
		path     relayPath
		mbs, cpu float64
		d        *relayDeployment
	}
	phases := []*phase{
		{name: "direct", path: childPath(b.backend, nil)},
		{name: "relay", path: b.postern.path(), d: b.postern},
		{name: "chain", path: childPath(b.chain, b.backend)},
	}
	if b.against != nil {
		phases = append(phases, &phase{name: "-against", path: b.against.path()})
	}
	for _, p := range phases {
		if p.d != nil {
			if err := p.d.profileStart(); err != nil {
				return nil, err
			}
		}
		p.mbs, p.cpu, err = download(p.path)
		if p.d != nil {
			if err := p.d.profileStop(); err != nil {
				return nil, err
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	direct, relayed, chained := phases[0], phases[1], phases[2]
	figs := []Figure{
		{Name: "one-stream MB/s", Unit: "MB/s", Value: relayed.mbs, Baseline: direct.mbs, Goal: 0.5},
		{Name: "one-stream MB/s vs chain", Unit: "MB/s", Value: relayed.mbs, Baseline: chained.mbs},
		{Name: "CPU per MB, all processes", Unit: "us", Value: relayed.cpu, Baseline: direct.cpu, LowerIsBetter: true},
		{Name: "CPU per MB vs chain", Unit: "us", Value: relayed.cpu, Baseline: chained.cpu, LowerIsBetter: true},
	}
	if len(phases) > 3 {
		against := phases[3]
		figs = append(figs,
			Figure{Name: "one-stream MB/s vs -against", Unit: "MB/s", Value: relayed.mbs, Baseline: against.mbs},
			Figure{Name: "-against MB/s vs direct", Unit: "MB/s", Value: against.mbs, Baseline: direct.mbs},
			Figure{Name: "CPU per MB vs -against", Unit: "us", Value: relayed.cpu, Baseline: against.cpu, LowerIsBetter: true},
		)
	}
	return figs, nil
}
