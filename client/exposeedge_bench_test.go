package client_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime"
	"strings"
	"testing"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/servertest"
)

// BenchmarkExposeEdge measures a small GET through postern and a native
// agent: plain, behind access rules (basic auth, an allow-list, a response
// header: checked on the server), and with the agent's inspector
// recording (bodies copied into its ring). Compare the three as ratios
// within one run.
func BenchmarkExposeEdge(b *testing.B) {
	ln := smallAnswers(b)
	n, c := exposeNode(b)
	port := n.URL[strings.LastIndex(n.URL, ":"):]
	ins := client.NewInspector(client.InspectorOptions{})
	b.Cleanup(ins.Close)
	for _, bc := range []struct {
		name string
		o    client.ExposeOptions
		auth string
	}{
		{"plain", client.ExposeOptions{}, ""},
		{"access", client.ExposeOptions{BasicAuth: "u:p", AllowCIDR: []string{"127.0.0.0/8"}, ResponseHeaders: http.Header{"X-A": {"1"}}}, "Basic dTpw"},
		{"inspector", client.ExposeOptions{Inspector: ins}, ""},
	} {
		o := bc.o
		o.Name, o.Local = bc.name, "http://"+ln.Addr().String()
		if err := startExpose(b, c, o); err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("GET", n.URL+"/", nil)
					req.Host = bc.name + ".expose.test" + port
					if bc.auth != "" {
						req.Header.Set("Authorization", bc.auth)
					}
					resp, err := hc.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}

// BenchmarkExposeVsProxy measures a small GET through postern and a
// native agent, and through a plain httputil.ReverseProxy to the same
// service, with 1, 8 and 32 connections (at GOMAXPROCS 2), reporting
// the process's CPU per request beside the time: compare the two as
// ratios within one run, and build both sides of an A/B from it (under
// the shared machine's load the CPU per request moves less than the
// time). `perf stat -e raw_syscalls:sys_enter` on one case counts the
// system calls per request.
func BenchmarkExposeVsProxy(b *testing.B) {
	ln := smallAnswers(b)
	target, _ := url.Parse("http://" + ln.Addr().String())
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.SetXForwarded() },
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	proxy := &http.Server{Handler: rp}
	go proxy.Serve(pln)
	b.Cleanup(func() { proxy.Close() })
	n, c := exposeNode(b)
	if err := startExpose(b, c, client.ExposeOptions{Name: "bench", Local: target.String()}); err != nil {
		b.Fatal(err)
	}
	port := n.URL[strings.LastIndex(n.URL, ":"):]
	for _, path := range []struct{ name, url, host string }{
		{"expose", n.URL + "/", "bench.expose.test" + port},
		{"proxy", "http://" + pln.Addr().String() + "/", ""},
	} {
		get := func(b *testing.B, hc *http.Client) bool {
			req, _ := http.NewRequest("GET", path.url, nil)
			if path.host != "" {
				req.Host = path.host
			}
			resp, err := hc.Do(req)
			if err != nil {
				b.Error(err)
				return false
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return false
			}
			return true
		}
		for _, conns := range []int{1, 8, 32} {
			b.Run(fmt.Sprintf("%s/conns=%d", path.name, conns), func(b *testing.B) {
				tr := &http.Transport{MaxIdleConnsPerHost: 64}
				defer tr.CloseIdleConnections()
				hc := &http.Client{Transport: tr}
				cpu := cpuTime()
				defer func() { b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N)/1e3, "cpu-us/op") }()
				if conns == 1 {
					for b.Loop() && get(b, hc) {
					}
					return
				}
				b.SetParallelism(max(1, conns/runtime.GOMAXPROCS(0)))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() && get(b, hc) {
					}
				})
			})
		}
	}
}

// smallAnswers serves 512 bytes to every request on a loopback port, the
// local service the benchmarks expose, until b ends.
func smallAnswers(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	local := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 512))
	})}
	go local.Serve(ln)
	b.Cleanup(func() { local.Close() })
	return ln
}

// exposeNode starts a node that routes NAME.expose.test to its agents,
// and a client of it.
func exposeNode(b *testing.B) (*servertest.Node, *client.Client) {
	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	n := servertest.Start(b, cfg)
	c, _ := client.New(n.URL)
	return n, c
}
