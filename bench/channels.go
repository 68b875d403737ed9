package main

// Channels scenarios. Servers run in a child process (this binary started
// again with benchChildEnv set), so that the idle-memory figure is the
// server's own RSS, not the harness's clients. The baseline is a minimal
// broadcast server written on coder/websocket with pinghub's design: a
// reader and a writer goroutine per connection and a 256-message channel
// of byte slices as the send queue.
//
// Diagnostics: POSTERN_BENCH_MEMSTATS=<file prefix> makes the children
// print memory statistics and write heap profiles at each measurement (and
// the fan-out print postern's delivery counters);
// POSTERN_BENCH_CPUPROFILE=<file> profiles the postern child's CPU.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/server"
)

const benchChildEnv = "POSTERN_BENCH_CHANNELS_CHILD"

// Figures of the scenarios.
const (
	fanoutSubscribers = 10000
	fanoutMessages    = 20
	idleConns         = 10000
	idleChannels      = 1000
)

func init() {
	if kind := os.Getenv(benchChildEnv); kind != "" {
		os.Exit(runChild(kind))
	}
	register(Scenario{
		Name:     "channels-fanout",
		Baseline: "minimal coder/websocket broadcast server (pinghub's design), same clients",
		Run:      runFanout,
	})
	register(Scenario{
		Name:     "channels-idle-memory",
		Baseline: "minimal coder/websocket broadcast server (pinghub's design), same clients",
		Run:      runIdleMemory,
	})
}

// raiseFileLimit lifts the soft open-file limit to the hard one: 10,000
// connections need more descriptors than the usual default.
func raiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return err
		}
	}
	if lim.Cur < need {
		return fmt.Errorf("open-file limit %d is below the %d this scenario needs (raise the hard limit)", lim.Cur, need)
	}
	return nil
}

// child is a server process started by the harness.
type child struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	base string // http://addr of the server
	ctl  string // http://addr of its control endpoint
}

func startChild(kind string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), benchChildEnv+"="+kind)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		in.Close()
		cmd.Wait()
		return nil, fmt.Errorf("%s server did not start: %v", kind, err)
	}
	var addr, ctl string
	if _, err := fmt.Sscanf(line, "listening %s %s", &addr, &ctl); err != nil {
		in.Close()
		cmd.Wait()
		return nil, fmt.Errorf("%s server said %q", kind, line)
	}
	go io.Copy(io.Discard, out)
	return &child{cmd: cmd, in: in, base: "http://" + addr, ctl: "http://" + ctl}, nil
}

func (c *child) stop() error {
	c.in.Close()
	return c.cmd.Wait()
}

// rss asks the child to collect garbage and return memory to the OS, then
// reports its resident set in bytes.
func (c *child) rss() (float64, error) {
	res, err := http.Get(c.ctl + "/rss")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
}

// runChild is the child's main: serve until standard input closes.
func runChild(kind string) int {
	if err := raiseFileLimit(idleConns + 1000); err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		return 1
	}
	var h http.Handler
	var stop func()
	switch kind {
	case "postern":
		cfg := server.DefaultConfig()
		cfg.Store = "memory"
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		srv, err := server.New(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			return 1
		}
		h = srv.Handler()
		stop = func() { srv.Shutdown(context.Background()) }
	case "baseline":
		b := &baselineServer{conns: make(map[*baselineConn]struct{})}
		h, stop = b, b.closeAll
	default:
		fmt.Fprintln(os.Stderr, "bench child: unknown kind", kind)
		return 2
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		return 1
	}
	ctl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		return 1
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	if f := os.Getenv("POSTERN_BENCH_CPUPROFILE"); f != "" && kind == "postern" {
		if out, err := os.Create(f); err == nil {
			pprof.StartCPUProfile(out)
			defer func() { pprof.StopCPUProfile(); out.Close() }()
		}
	}
	go http.Serve(ctl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Let connections in progress settle (handlers finishing their
		// handshakes) before measuring.
		for last, same, i := -1, 0, 0; same < 3 && i < 100; i++ {
			if n := runtime.NumGoroutine(); n == last {
				same++
			} else {
				last, same = n, 0
			}
			time.Sleep(100 * time.Millisecond)
		}
		runtime.GC()
		debug.FreeOSMemory()
		fmt.Fprintf(w, "%d\n", vmRSS())
		if os.Getenv("POSTERN_BENCH_MEMSTATS") != "" {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(os.Stderr, "%s: rss %d heapinuse %d stackinuse %d goroutines %d heapobjects %d\n", kind, vmRSS(), ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine(), ms.HeapObjects)
			if f, err := os.Create(os.Getenv("POSTERN_BENCH_MEMSTATS") + "." + kind); err == nil {
				pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}))
	fmt.Printf("listening %s %s\n", ln.Addr(), ctl.Addr())
	io.Copy(io.Discard, os.Stdin)
	stop()
	srv.Close()
	return 0
}

// vmRSS reads the process's resident set size in bytes.
func vmRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// baselineServer is the denominator: websocket subscribe on any path,
// publish by POST, as little as coder/websocket allows, with pinghub's
// per-connection design.
type baselineServer struct {
	mu    sync.Mutex
	conns map[*baselineConn]struct{}
}

type baselineConn struct {
	path string
	c    *websocket.Conn
	send chan []byte
}

func (b *baselineServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		for bc := range b.conns {
			if bc.path != r.URL.Path {
				continue
			}
			select {
			case bc.send <- body:
			default: // slow: dropped, as pinghub did
			}
		}
		b.mu.Unlock()
		w.Write([]byte("OK\n"))
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	bc := &baselineConn{path: r.URL.Path, c: c, send: make(chan []byte, 256)}
	b.mu.Lock()
	b.conns[bc] = struct{}{}
	b.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case m := <-bc.send:
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := c.Write(ctx, websocket.MessageText, m)
				cancel()
				if err != nil {
					c.CloseNow()
					return
				}
			case <-r.Context().Done():
				return
			}
		}
	}()
	for {
		if _, _, err := c.Read(context.Background()); err != nil {
			break
		}
	}
	b.mu.Lock()
	delete(b.conns, bc)
	b.mu.Unlock()
	c.CloseNow()
	<-done
}

func (b *baselineServer) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for bc := range b.conns {
		bc.c.CloseNow()
	}
}

// wsClient is the harness's websocket client: a bare reader of server
// frames, so that the clients' own cost (they share the machine's cores
// with the server) stays small and the same for postern and the baseline.
type wsClient struct {
	c  net.Conn
	br *bufio.Reader
}

// dialWS opens a websocket to addr+path.
func dialWS(ctx context.Context, addr, path string) (*wsClient, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr)
	br := bufio.NewReaderSize(c, 1024)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, fmt.Errorf("handshake: %s", res.Status)
	}
	c.SetDeadline(time.Time{})
	return &wsClient{c: c, br: br}, nil
}

// next returns the payload of the next data frame, answering pings.
func (w *wsClient) next() ([]byte, error) {
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.br, h[:]); err != nil {
			return nil, err
		}
		op, n := h[0]&0x0f, int(h[1]&0x7f)
		switch n {
		case 126:
			var ext [2]byte
			if _, err := io.ReadFull(w.br, ext[:]); err != nil {
				return nil, err
			}
			n = int(ext[0])<<8 | int(ext[1])
		case 127:
			var ext [8]byte
			if _, err := io.ReadFull(w.br, ext[:]); err != nil {
				return nil, err
			}
			n = 0
			for _, b := range ext {
				n = n<<8 | int(b)
			}
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(w.br, p); err != nil {
			return nil, err
		}
		switch op {
		case 0x8:
			return nil, io.EOF
		case 0x9: // ping: pong with the same payload, masked with a zero key
			if len(p) <= 125 {
				w.c.Write(append([]byte{0x8a, 0x80 | byte(len(p)), 0, 0, 0, 0}, p...))
			}
			continue
		case 0xa:
			continue
		}
		return p, nil
	}
}

// dialAll opens n websockets to base+path(i), 32 at a time.
func dialAll(ctx context.Context, base string, n int, path func(i int) string) ([]*wsClient, error) {
	addr := strings.TrimPrefix(base, "http://")
	conns := make([]*wsClient, n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				c, err := dialWS(dctx, addr, path(i))
				cancel()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("dial %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(conns)
		return nil, firstErr
	}
	return conns, nil
}

func closeAll(conns []*wsClient) {
	for _, c := range conns {
		if c != nil {
			c.c.Close()
		}
	}
}

// fanout measures, for one server, the delivery latency of each message
// to each of subs subscribers: messages are published one after another,
// each once every subscriber has the previous one.
func fanout(ctx context.Context, kind, pubPath, subPath string, subs int) (p50, p99 time.Duration, err error) {
	ch, err := startChild(kind)
	if err != nil {
		return 0, 0, err
	}
	defer ch.stop()
	conns, err := dialAll(ctx, ch.base, subs, func(int) string { return subPath })
	if err != nil {
		return 0, 0, err
	}
	// Let the server register every subscriber: postern subscribes before
	// it completes the handshake, the baseline right after; one warm-up
	// message reaching everyone proves it either way.
	var got atomic.Int64
	arrived := make(chan struct{}, 1)
	lat := make([][]time.Duration, len(conns))
	var readers sync.WaitGroup
	defer func() { closeAll(conns); readers.Wait() }()
	for i, c := range conns {
		readers.Go(func() {
			samples := make([]time.Duration, 0, fanoutMessages)
			defer func() { lat[i] = samples }()
			for {
				b, err := c.next()
				if err != nil {
					return
				}
				now := time.Now()
				if sent, err := strconv.ParseInt(string(b), 10, 64); err == nil && sent > 0 {
					samples = append(samples, now.Sub(time.Unix(0, sent)))
				}
				if got.Add(1)%int64(len(conns)) == 0 {
					select {
					case arrived <- struct{}{}:
					default:
					}
				}
			}
		})
	}
	hc := httpClient(1)
	post := func(body string) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ch.base+pubPath, strings.NewReader(body))
		return expect(hc, req, http.StatusOK)
	}
	wait := func(n int64) error {
		deadline := time.After(60 * time.Second)
		for got.Load() < n {
			select {
			case <-arrived:
			case <-deadline:
				return fmt.Errorf("%s: %d of %d deliveries after 60 s", kind, got.Load(), n)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	if err := post("0"); err != nil {
		return 0, 0, err
	}
	if err := wait(int64(len(conns))); err != nil {
		return 0, 0, fmt.Errorf("warm-up: %w", err)
	}
	for i := 1; i <= fanoutMessages; i++ {
		if err := post(strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil {
			return 0, 0, err
		}
		if err := wait(int64((i + 1) * len(conns))); err != nil {
			return 0, 0, err
		}
	}
	if os.Getenv("POSTERN_BENCH_MEMSTATS") != "" {
		if res, err := http.Get(ch.base + "/metrics"); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "closed_total") || strings.Contains(l, "slow") || strings.Contains(l, "broker_delivered") {
					fmt.Fprintln(os.Stderr, kind, l)
				}
			}
		}
	}
	closeAll(conns)
	readers.Wait()
	all := slices.Concat(lat...)
	if len(all) != fanoutMessages*len(conns) {
		return 0, 0, fmt.Errorf("%s: %d latency samples, want %d", kind, len(all), fanoutMessages*len(conns))
	}
	r := LoadResult{Latencies: all}
	return r.Percentile(50), r.Percentile(99), nil
}

func runFanout(ctx context.Context, o Options) ([]Figure, error) {
	if err := raiseFileLimit(fanoutSubscribers + 1000); err != nil {
		return nil, err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	var figs []Figure
	for _, subs := range []int{fanoutSubscribers / 10, fanoutSubscribers} {
		p50, p99, err := fanout(ctx, "postern", "/c/fan", "/c/fan", subs)
		if err != nil {
			return nil, err
		}
		b50, b99, err := fanout(ctx, "baseline", "/fan", "/fan", subs)
		if err != nil {
			return nil, err
		}
		n := strconv.Itoa(subs)
		figs = append(figs,
			Figure{Name: "p50 delivery to " + n + " subs", Unit: "ms", Value: ms(p50), Baseline: ms(b50), LowerIsBetter: true},
			Figure{Name: "p99 delivery to " + n + " subs", Unit: "ms", Value: ms(p99), Baseline: ms(b99), LowerIsBetter: true})
		if subs == fanoutSubscribers {
			figs = append(figs, Figure{Name: "p99 delivery to " + n + " subs (absolute)", Unit: "ms", Value: ms(p99), LowerIsBetter: true, Goal: 100})
		}
	}
	return figs, nil
}

// idleMemory reports a server's RSS growth per idle websocket, right
// after the connections were made and again once the server has pinged
// every connection (and read its pong) once.
func idleMemory(ctx context.Context, kind, prefix string) (fresh, pinged float64, err error) {
	ch, err := startChild(kind)
	if err != nil {
		return 0, 0, err
	}
	defer ch.stop()
	// Warm up: a few connections, so that one-time costs (pools, code
	// pages, the first channel) are not charged to the measured ones.
	warm, err := dialAll(ctx, ch.base, 100, func(i int) string { return prefix + "/warm/" + strconv.Itoa(i%10) })
	if err != nil {
		return 0, 0, err
	}
	closeAll(warm)
	before, err := ch.rss()
	if err != nil {
		return 0, 0, err
	}
	conns, err := dialAll(ctx, ch.base, idleConns, func(i int) string { return prefix + "/idle/" + strconv.Itoa(i%idleChannels) })
	if err != nil {
		return 0, 0, err
	}
	// Clients must read for their connections to be healthy (pongs).
	var readers sync.WaitGroup
	defer func() { closeAll(conns); readers.Wait() }()
	for _, c := range conns {
		readers.Go(func() { c.next() })
	}
	after, err := ch.rss()
	if err != nil {
		return 0, 0, err
	}
	// postern pings every 27 s: past 30 s every connection has had one.
	select {
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	later, err := ch.rss()
	if err != nil {
		return 0, 0, err
	}
	if after < before || later < before {
		return 0, 0, errors.New("RSS shrank while connections were added: measurement is noise")
	}
	return (after - before) / idleConns / 1024, (later - before) / idleConns / 1024, nil
}

func runIdleMemory(ctx context.Context, o Options) ([]Figure, error) {
	if err := raiseFileLimit(idleConns + 1000); err != nil {
		return nil, err
	}
	p, pp, err := idleMemory(ctx, "postern", "/c")
	if err != nil {
		return nil, err
	}
	b, bp, err := idleMemory(ctx, "baseline", "")
	if err != nil {
		return nil, err
	}
	n := strconv.Itoa(idleConns)
	return []Figure{
		{Name: "RSS per idle websocket (" + n + ")", Unit: "KB", Value: p, Baseline: b, LowerIsBetter: true},
		{Name: "same, after a ping round", Unit: "KB", Value: pp, Baseline: bp, LowerIsBetter: true},
		{Name: "RSS per idle websocket (absolute)", Unit: "KB", Value: max(p, pp), LowerIsBetter: true, Goal: 12},
	}, nil
}
