// Command mux compares the two stream multiplexers the native expose agent
// could use, hashicorp/yamux and xtaci/smux, over plain loopback TCP and over
// a coder/websocket connection made into a net.Conn. It is its own module so
// that the library that loses never enters postern's main module.
//
//	go run . -rounds 5 -duration 3s
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/xtaci/smux"

	"github.com/postern/postern/internal/expose/muxconn"
)

const (
	workers  = 32
	msgSize  = 64
	bulkSize = 256 << 20
)

var (
	rounds   = flag.Int("rounds", 5, "rounds; libraries alternate in order round by round")
	duration = flag.Duration("duration", 3*time.Second, "duration of the timed figures")
	window   = flag.Int("window", 4<<20, "stream window (yamux MaxStreamWindowSize, smux MaxStreamBuffer); postern's DefaultStreamWindow is 4 MiB")
)

// session is what the benchmark needs of either library.
type session interface {
	open() (net.Conn, error)
	accept() (net.Conn, error)
	Close() error
}

type yamuxSession struct{ *yamux.Session }

func (s yamuxSession) open() (net.Conn, error)   { return s.Open() }
func (s yamuxSession) accept() (net.Conn, error) { return s.Accept() }

type smuxSession struct{ *smux.Session }

func (s smuxSession) open() (net.Conn, error)   { return s.OpenStream() }
func (s smuxSession) accept() (net.Conn, error) { return s.AcceptStream() }

type library struct {
	name string
	pair func(client, server net.Conn) (session, session, error)
}

var libraries = []library{
	{"yamux", func(c, s net.Conn) (session, session, error) {
		cfg := func() *yamux.Config {
			cfg := yamux.DefaultConfig()
			cfg.EnableKeepAlive = true
			cfg.KeepAliveInterval = 15 * time.Second
			cfg.MaxStreamWindowSize = uint32(*window)
			cfg.LogOutput = io.Discard
			return cfg
		}
		cs, err := yamux.Client(c, cfg())
		if err != nil {
			return nil, nil, err
		}
		ss, err := yamux.Server(s, cfg())
		if err != nil {
			cs.Close()
			return nil, nil, err
		}
		return yamuxSession{cs}, yamuxSession{ss}, nil
	}},
	{"smux", func(c, s net.Conn) (session, session, error) {
		cfg := func() *smux.Config {
			cfg := smux.DefaultConfig()
			cfg.Version = 2
			cfg.MaxStreamBuffer = *window
			cfg.MaxReceiveBuffer = max(cfg.MaxReceiveBuffer, *window)
			return cfg
		}
		cs, err := smux.Client(c, cfg())
		if err != nil {
			return nil, nil, err
		}
		ss, err := smux.Server(s, cfg())
		if err != nil {
			cs.Close()
			return nil, nil, err
		}
		return smuxSession{cs}, smuxSession{ss}, nil
	}},
}

// transport yields a connected pair of loopback connections and a cleanup
// that stops everything it started.
type transport struct {
	name string
	pair func() (client, server net.Conn, stop func(), err error)
}

var transports = []transport{
	{"tcp", tcpPair},
	{"ws", func() (net.Conn, net.Conn, func(), error) { return wsPair(false) }},
	{"ws+gather", func() (net.Conn, net.Conn, func(), error) { return wsPair(true) }},
}

func tcpPair() (net.Conn, net.Conn, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, nil, err
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	r := <-ch
	if err != nil || r.err != nil {
		if c != nil {
			c.Close()
		}
		if r.c != nil {
			r.c.Close()
		}
		return nil, nil, nil, errors.Join(err, r.err)
	}
	return c, r.c, func() { c.Close(); r.c.Close() }, nil
}

// wsPair is a websocket over loopback made into a net.Conn at each end:
// websocket.NetConn, or with gather postern's own wire (muxconn.Conn).
func wsPair(gather bool) (net.Conn, net.Conn, func(), error) {
	netConn := func(ctx context.Context, c *websocket.Conn) net.Conn {
		if gather {
			return muxconn.Conn(ctx, c)
		}
		return websocket.NetConn(ctx, c, websocket.MessageBinary)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan net.Conn, 1)
	var handlers sync.WaitGroup
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Done()
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return
		}
		got <- netConn(ctx, c)
		<-ctx.Done()
	})}
	served := make(chan struct{})
	go func() { srv.Serve(ln); close(served) }()
	stopServer := func() {
		cancel()
		srv.Close()
		<-served
		handlers.Wait()
	}
	wc, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/", &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		stopServer()
		return nil, nil, nil, err
	}
	c := netConn(ctx, wc)
	s := <-got
	return c, s, func() { c.Close(); s.Close(); stopServer() }, nil
}

// env is one library over one transport: a client and a server session,
// the server answering every stream with handle.
type env struct {
	client, server session
	wg             sync.WaitGroup
	stopTransport  func()
}

func start(t transport, l library, handle func(net.Conn)) (*env, error) {
	c, s, stop, err := t.pair()
	if err != nil {
		return nil, err
	}
	cs, ss, err := l.pair(c, s)
	if err != nil {
		stop()
		return nil, err
	}
	e := &env{client: cs, server: ss, stopTransport: stop}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			st, err := ss.accept()
			if err != nil {
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer st.Close()
				handle(st)
			}()
		}
	}()
	return e, nil
}

func (e *env) stop() {
	e.client.Close()
	e.server.Close()
	e.stopTransport()
	e.wg.Wait()
}

// echo answers each 64-byte request with itself until the stream ends.
func echo(st net.Conn) {
	buf := make([]byte, msgSize)
	for {
		if _, err := io.ReadFull(st, buf); err != nil {
			return
		}
		if _, err := st.Write(buf); err != nil {
			return
		}
	}
}

func roundTrip(st net.Conn, req, resp []byte) error {
	if _, err := st.Write(req); err != nil {
		return err
	}
	if _, err := io.ReadFull(st, resp); err != nil {
		return err
	}
	if !bytes.Equal(req, resp) {
		return errors.New("the answer is not the request")
	}
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

type result map[string]float64

// requests: 32 long-lived streams, 64-byte request, 64-byte echo.
func requests(t transport, l library, res result) error {
	e, err := start(t, l, echo)
	if err != nil {
		return err
	}
	defer e.stop()
	streams := make([]net.Conn, workers)
	for i := range streams {
		if streams[i], err = e.client.open(); err != nil {
			return err
		}
		defer streams[i].Close()
	}
	runtime.GC()
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	m0, c0, t0 := mallocs(), cpuTime(), time.Now()
	deadline := t0.Add(*duration)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := make([]byte, msgSize), make([]byte, msgSize)
			for j := range req {
				req[j] = byte(i + j)
			}
			l := make([]time.Duration, 0, 1<<16)
			for {
				s := time.Now()
				if s.After(deadline) {
					break
				}
				if err := roundTrip(streams[i], req, resp); err != nil {
					errs[i] = err
					break
				}
				l = append(l, time.Since(s))
			}
			lat[i] = l
		}()
	}
	wg.Wait()
	elapsed, cpu, allocs := time.Since(t0), cpuTime()-c0, mallocs()-m0
	if err := errors.Join(errs...); err != nil {
		return err
	}
	all := slices.Concat(lat...)
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	n := float64(len(all))
	res["req rt/s"] = n / elapsed.Seconds()
	res["req p99 µs"] = float64(all[len(all)*99/100].Microseconds())
	res["req CPU µs/rt"] = cpu.Seconds() * 1e6 / n
	res["req allocs/rt"] = float64(allocs) / n
	return nil
}

// churn: open, 64-byte request, 64-byte answer, close, from 32 workers.
func churn(t transport, l library, res result) error {
	e, err := start(t, l, echo)
	if err != nil {
		return err
	}
	defer e.stop()
	var count atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	t0 := time.Now()
	deadline := t0.Add(*duration)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := make([]byte, msgSize), make([]byte, msgSize)
			for j := range req {
				req[j] = byte(i * j)
			}
			for time.Now().Before(deadline) {
				st, err := e.client.open()
				if err != nil {
					errs[i] = err
					return
				}
				err = roundTrip(st, req, resp)
				st.Close()
				if err != nil {
					errs[i] = err
					return
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	res["churn streams/s"] = float64(count.Load()) / elapsed.Seconds()
	return nil
}

// bulk: the server side writes 256 MiB on one stream; MB/s at the reader.
func bulk(t transport, l library, res result) error {
	e, err := start(t, l, func(st net.Conn) {
		var cmd [1]byte
		if _, err := io.ReadFull(st, cmd[:]); err != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for sent := 0; sent < bulkSize; sent += len(buf) {
			if _, err := st.Write(buf); err != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	defer e.stop()
	st, err := e.client.open()
	if err != nil {
		return err
	}
	defer st.Close()
	t0 := time.Now()
	if _, err := st.Write([]byte{1}); err != nil {
		return err
	}
	if _, err := io.CopyBuffer(io.Discard, io.LimitReader(st, bulkSize), make([]byte, 64<<10)); err != nil {
		return err
	}
	res["bulk MB/s"] = bulkSize / 1e6 / time.Since(t0).Seconds()
	return nil
}

var figures = []string{"req rt/s", "req p99 µs", "req CPU µs/rt", "req allocs/rt", "churn streams/s", "bulk MB/s"}

// settle waits for the goroutines of a round to be gone.
func settle(base int) error {
	for i := 0; i < 200; i++ {
		if runtime.NumGoroutine() <= base {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%d goroutines left after the round (base %d)", runtime.NumGoroutine(), base)
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func main() {
	flag.Parse()
	base := runtime.NumGoroutine()
	// samples[transport][library][figure] over rounds
	samples := map[string]map[string]map[string][]float64{}
	for _, t := range transports {
		samples[t.name] = map[string]map[string][]float64{}
		for _, l := range libraries {
			samples[t.name][l.name] = map[string][]float64{}
		}
	}
	fmt.Printf("GOMAXPROCS %d, %s, window %d, %d rounds of %v\n", runtime.GOMAXPROCS(0), runtime.Version(), *window, *rounds, *duration)
	for r := range *rounds {
		order := slices.Clone(libraries)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, t := range transports {
			for _, measure := range []func(transport, library, result) error{requests, churn, bulk} {
				for _, l := range order {
					res := result{}
					if err := measure(t, l, res); err != nil {
						fmt.Fprintf(os.Stderr, "round %d %s %s: %v\n", r+1, t.name, l.name, err)
						os.Exit(1)
					}
					for k, v := range res {
						samples[t.name][l.name][k] = append(samples[t.name][l.name][k], v)
					}
				}
			}
		}
		if err := settle(base); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "round %d done\n", r+1)
	}
	fmt.Printf("\n| transport | figure | yamux | smux | smux/yamux | yamux range | smux range |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, t := range transports {
		for _, f := range figures {
			ys, ss := samples[t.name]["yamux"][f], samples[t.name]["smux"][f]
			y, s := median(ys), median(ss)
			fmt.Printf("| %s | %s | %s | %s | %.2f | %s–%s | %s–%s |\n", t.name, f, num(y), num(s), s/y,
				num(slices.Min(ys)), num(slices.Max(ys)), num(slices.Min(ss)), num(slices.Max(ss)))
		}
	}
}

func num(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
