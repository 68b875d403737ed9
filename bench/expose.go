package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/node"
)

func init() {
	register(Scenario{
		Name:     "expose",
		Baseline: "httputil.ReverseProxy to the same backend, same client, same connections",
		Run:      runExpose,
	})
	register(Scenario{
		Name:     "expose-brickchain",
		Baseline: "httputil.ReverseProxy to the same backend, same client, same connections",
		Run:      runExposeBrickchain,
	})
}

// exposeNode starts a node with the expose domain "localhost".
func exposeNode() (*benchNode, error) {
	cfg := node.DefaultConfig()
	cfg.Store = "memory"
	cfg.Expose.Domain = "localhost"
	cfg.Expose.Brickchain.ClientRate = 0
	return startNode(cfg)
}

// reverseProxy is the baseline: a plain httputil.ReverseProxy to target.
func reverseProxy(target string, conns int) (string, func(), error) {
	u, _ := url.Parse(target)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u); pr.SetXForwarded() },
		Transport: &http.Transport{MaxIdleConnsPerHost: conns * 2, DisableCompression: true},
		ErrorLog:  log.New(io.Discard, "", 0), // phases end by cancelling requests
	}
	return startHTTP(rp)
}

// bytesHandler answers /bytes?n=N with N bytes, everything else like
// plainHandler.
var bytesHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/bytes" {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		buf := make([]byte, 256<<10)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
		return
	}
	plainHandler(w, r)
})

// getHost is a closed-loop operation: GET url with Host host, expect 200.
func getHost(c *http.Client, u, host string) func(ctx context.Context, w, seq int) error {
	return func(ctx context.Context, w, seq int) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
		if host != "" {
			req.Host = host
		}
		return expect(c, req, 200)
	}
}

func portOf(u string) string { return u[strings.LastIndex(u, ":"):] }

// exposePath is the expose scenarios' servers, all in this process: a
// backend, a plain httputil.ReverseProxy to it (the baseline), a node with
// the native agent exposing the backend as host, and baseline-hello.
type exposePath struct {
	proxyURL, nodeURL, helloURL string
	host                        string // the exposed service's Host on the node
	stops                       []func()
}

// stop stops the servers, the last started first.
func (p *exposePath) stop() {
	for i := len(p.stops) - 1; i >= 0; i-- {
		p.stops[i]()
	}
}

// startExposePath starts an exposePath and waits for the agent to be ready.
func startExposePath(ctx context.Context, conns int) (_ *exposePath, err error) {
	p := &exposePath{}
	defer func() {
		if err != nil {
			p.stop()
		}
	}()
	// Goroutines inherit a label naming their part (see labelPart).
	defer labelPart(ctx, "harness")
	labelPart(ctx, "backend")
	backendURL, stopBackend, err := startHTTP(bytesHandler)
	if err != nil {
		return nil, err
	}
	p.stops = append(p.stops, stopBackend)
	labelPart(ctx, "proxy")
	proxyURL, stopProxy, err := reverseProxy(backendURL, conns)
	if err != nil {
		return nil, err
	}
	p.stops = append(p.stops, stopProxy)
	labelPart(ctx, "node")
	n, err := exposeNode()
	if err != nil {
		return nil, err
	}
	p.stops = append(p.stops, func() { n.stop() })
	cl, err := client.New(n.URL)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	ready := make(chan struct{}, 1)
	agentDone := make(chan error, 1)
	labelPart(ctx, "agent")
	go func() {
		agentDone <- cl.Expose(actx, client.ExposeOptions{
			Name: "bench", Local: backendURL, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			OnReady: func(string) {
				select {
				case ready <- struct{}{}:
				default:
				}
			},
		})
	}()
	p.stops = append(p.stops, func() { cancel(); <-agentDone })
	select {
	case <-ready:
	case err := <-agentDone:
		agentDone <- err // for the stop above
		return nil, fmt.Errorf("agent: %v", err)
	case <-time.After(10 * time.Second):
		return nil, errors.New("agent not ready")
	}
	labelPart(ctx, "hello")
	helloURL, stopHello, err := startHello()
	if err != nil {
		return nil, err
	}
	p.stops = append(p.stops, stopHello)
	p.proxyURL, p.nodeURL, p.helloURL = proxyURL, n.URL, helloURL
	p.host = "bench.localhost" + portOf(n.URL)
	return p, nil
}

// runExpose measures the native agent: requests/s through node and agent
// against a plain reverse proxy, and one stream's download throughput.
func runExpose(ctx context.Context, o Options) ([]Figure, error) {
	p, err := startExposePath(ctx, o.Conns)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()
	proxyURL, helloURL, nodeURL, host := p.proxyURL, p.helloURL, p.nodeURL, p.host

	// Alternate slices so that the machine's load weighs on all alike.
	// The profile covers all: the part labels tell them apart.
	var base, got, hello LoadResult
	var baseCPU, gotCPU, helloCPU float64
	slice := o.Duration / 4
	err = profiled("expose", func() error {
		for range 4 {
			b, bc, err := measured(ctx, o.Conns, slice, getHost(c, proxyURL+"/", ""))
			if err != nil {
				return fmt.Errorf("baseline: %w", err)
			}
			h, hc, err := measured(ctx, o.Conns, slice, getHost(c, helloURL+"/", ""))
			if err != nil {
				return fmt.Errorf("baseline-hello: %w", err)
			}
			g, gc, err := measured(ctx, o.Conns, slice, getHost(c, nodeURL+"/", host))
			if err != nil {
				return fmt.Errorf("expose: %w", err)
			}
			base, got, hello = mergeLoad(base, b), mergeLoad(got, g), mergeLoad(hello, h)
			baseCPU, gotCPU, helloCPU = baseCPU+bc/4, gotCPU+gc/4, helloCPU+hc/4
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// One stream: a large download through each path.
	const size = 512 << 20
	through := func(u, h string) (float64, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", u+"/bytes?n="+strconv.Itoa(size), nil)
		if h != "" {
			req.Host = h
		}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		k, err := readAll(resp.Body, make([]byte, 1<<20))
		resp.Body.Close()
		if err != nil || k != size {
			return 0, fmt.Errorf("download: %d bytes, %v", k, err)
		}
		return float64(size) * 8 / time.Since(start).Seconds() / 1e9, nil
	}
	baseTP, err := through(proxyURL, "")
	if err != nil {
		return nil, err
	}
	tp, err := through(nodeURL, host)
	if err != nil {
		return nil, err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		// Issue 20: 0.85x with 32 and with 8 connections.
		{Name: "native req/s", Unit: "req/s", Value: got.Rate(), Baseline: base.Rate(), Goal: 0.85, Hello: hello.Rate()},
		{Name: "native CPU per req", Unit: "us", Value: gotCPU, Baseline: baseCPU, LowerIsBetter: true, Hello: helloCPU},
		{Name: "native p99", Unit: "ms", Value: ms(got.Percentile(99)), Baseline: ms(base.Percentile(99)), LowerIsBetter: true, Hello: ms(hello.Percentile(99))},
		{Name: "one-stream download", Unit: "Gbit/s", Value: tp, Baseline: baseTP},
		{Name: "one-stream download (absolute)", Unit: "Gbit/s", Value: tp, Goal: 1},
	}, nil
}

func mergeLoad(a, b LoadResult) LoadResult {
	a.Ops += b.Ops
	a.Errors += b.Errors
	a.Elapsed += b.Elapsed
	a.Latencies = append(a.Latencies, b.Latencies...)
	return a
}

// runExposeBrickchain measures requests/s through a brickchain agent (one
// websocket, JSON frames) written here as the original client behaves,
// answering each http-request at once with a 200.
func runExposeBrickchain(ctx context.Context, o Options) ([]Figure, error) {
	backendURL, stopBackend, err := startHTTP(plainHandler)
	if err != nil {
		return nil, err
	}
	defer stopBackend()
	proxyURL, stopProxy, err := reverseProxy(backendURL, o.Conns)
	if err != nil {
		return nil, err
	}
	defer stopProxy()
	n, err := exposeNode()
	if err != nil {
		return nil, err
	}
	defer n.stop()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	id, agentDone, err := brickchainAgent(actx, n.URL)
	if err != nil {
		return nil, err
	}
	defer func() { cancel(); <-agentDone }()
	helloURL, stopHello, err := startHello()
	if err != nil {
		return nil, err
	}
	defer stopHello()
	c := httpClient(o.Conns)
	defer c.CloseIdleConnections()
	host := id + ".localhost" + portOf(n.URL)
	var base, got, hello LoadResult
	slice := o.Duration / 4
	for range 4 {
		b, err := closedLoop(ctx, o.Conns, slice, getHost(c, proxyURL+"/", ""))
		if err != nil {
			return nil, fmt.Errorf("baseline: %w", err)
		}
		h, err := helloLoad(ctx, o.Conns, slice, getHost(c, helloURL+"/", ""))
		if err != nil {
			return nil, err
		}
		g, err := closedLoop(ctx, o.Conns, slice, getHost(c, n.URL+"/", host))
		if err != nil {
			return nil, fmt.Errorf("brickchain: %w", err)
		}
		base, got, hello = mergeLoad(base, b), mergeLoad(got, g), mergeLoad(hello, h)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Figure{
		{Name: "brickchain req/s", Unit: "req/s", Value: got.Rate(), Baseline: base.Rate(), Hello: hello.Rate()},
		{Name: "brickchain p99", Unit: "ms", Value: ms(got.Percentile(99)), Baseline: ms(base.Percentile(99)), LowerIsBetter: true, Hello: ms(hello.Percentile(99))},
	}, nil
}

// brickchainAgent connects and registers an agent that answers every
// http-request with 200 "ok"; it returns the client id.
func brickchainAgent(ctx context.Context, base string) (string, chan error, error) {
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/proxy/subscribe", nil)
	if err != nil {
		return "", nil, err
	}
	ws.SetReadLimit(-1)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	payload, _ := json.Marshal(map[string]any{"@type": brickchain.MandateTokenType, "@timestamp": time.Now().UTC(), "uri": base, "ttl": 60})
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, &jose.SignerOptions{EmbedJWK: true})
	jws, _ := signer.Sign(payload)
	tok, _ := jws.CompactSerialize()
	reg, _ := json.Marshal(brickchain.RegistrationRequest{Base: brickchain.NewBase(brickchain.TypeRegistrationRequest, "r"), MandateToken: tok})
	if err := ws.Write(ctx, websocket.MessageText, reg); err != nil {
		ws.CloseNow()
		return "", nil, err
	}
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			return "", nil, err
		}
		f, err := brickchain.Decode(b)
		if err != nil {
			continue
		}
		if f.Type == brickchain.TypeError {
			ws.CloseNow()
			return "", nil, errors.New(f.Error)
		}
		if f.Type == brickchain.TypeRegistrationResponse {
			done := make(chan error, 1)
			go func() {
				defer ws.CloseNow()
				for {
					_, b, err := ws.Read(ctx)
					if err != nil {
						done <- nil
						return
					}
					f, err := brickchain.Decode(b)
					if err != nil || f.Type != brickchain.TypeHTTPRequest {
						continue
					}
					resp, _ := json.Marshal(brickchain.HTTPResponse{Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 200, Body: "b2s="})
					if ws.Write(ctx, websocket.MessageText, resp) != nil {
						done <- nil
						return
					}
				}
			}()
			return f.KeyID, done, nil
		}
	}
}
