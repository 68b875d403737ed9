package main

// The soak's relay and expose: one backend behind the relay client and
// the expose agent, every answer checked byte for byte.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/client"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
)

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

// soakAgents are the relay client and the expose agent of a soak.
type soakAgents struct {
	wg          sync.WaitGroup
	cancel      context.CancelFunc
	exposeReady atomic.Int64 // times the expose agent connected
	exposeLog   *lineCounter // its warnings and errors
}

// startAgents starts the relay client for "soak" and the expose agent
// "soakx" in front of backendURL, and waits until the agent is ready.
func (r *soakRun) startAgents(ctx context.Context, backendURL string) (*soakAgents, error) {
	a := &soakAgents{exposeLog: &lineCounter{}}
	ctx, a.cancel = context.WithCancel(ctx)
	rc, err := gcrclient.New(gcrclient.Options{
		RelayURL: r.base, ServerName: "soak", BackendURL: backendURL,
		NumPendingRequests: soakRelayWorkers, Relay: httpClient(2 * soakRelayWorkers), Backend: httpClient(2 * soakRelayWorkers),
	})
	if err != nil {
		a.cancel()
		return nil, err
	}
	a.wg.Go(func() {
		if err := rc.Run(ctx); err != nil && ctx.Err() == nil {
			r.errs.add("relay", "relay client stopped: %v", err)
		}
	})
	ready := make(chan struct{}, 1)
	agentLog := slog.New(slog.NewTextHandler(a.exposeLog, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if soakDebug {
		agentLog = slog.New(slog.NewMultiHandler(agentLog.Handler(), slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	}
	a.wg.Go(func() {
		err := r.cl.Expose(ctx, client.ExposeOptions{
			Name: "soakx", Local: backendURL, Logger: agentLog,
			OnReady: func(string) {
				a.exposeReady.Add(1)
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
		return a, nil
	case <-time.After(20 * time.Second):
		a.stop()
		return nil, errors.New("expose agent not ready within 20s")
	}
}

// stop stops both agents and waits for them; it may be called again.
func (a *soakAgents) stop() {
	a.cancel()
	a.wg.Wait()
}

// check notes what went wrong with the agents: the expose agent must
// have connected once, and logged no warning.
func (a *soakAgents) check(errs *soakErrors) {
	if n := a.exposeReady.Load(); n != 1 {
		errs.add("expose", "agent connected %d times, want 1 (its connection dropped)", n)
	}
	if n := a.exposeLog.n.Load(); n > 0 {
		errs.add("expose", "agent logged %d warnings or errors", n)
	}
}
