package client_test

import (
	"io"
	"net"
	"net/http"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	local := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 512))
	})}
	go local.Serve(ln)
	b.Cleanup(func() { local.Close() })
	cfg := servertest.Config()
	cfg.Expose.Domain = "expose.test"
	n := servertest.Start(b, cfg)
	c, _ := client.New(n.URL)
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
