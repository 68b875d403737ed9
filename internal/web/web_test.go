package web_test

import (
	"github.com/postern/postern/internal/browsertest"

	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/httpapi"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/web"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

func status(t *testing.T, base string) map[string]map[string]any {
	t.Helper()
	code, h, body := get(t, base+web.StatusPath)
	if code != 200 || h.Get("Content-Type") != "application/json" {
		t.Fatalf("status: %d %v", code, h)
	}
	var st map[string]map[string]any
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("status %s: %v", body, err)
	}
	return st
}

func TestPageAndStatus(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	for _, p := range []string{"/", web.PagePath} {
		code, h, body := get(t, n.URL+p)
		if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(body, "<title>postern</title>") {
			t.Fatalf("GET %s: %d %v", p, code, h)
		}
		for _, bad := range []string{"src=", "href=", "http://", "https://", "url(", "@import"} {
			// The one URL in the page is the SVG namespace, a name.
			if strings.Contains(strings.ReplaceAll(body, `"http://www.w3.org/2000/svg"`, ""), bad) {
				t.Fatalf("page refers to an outside resource (%q)", bad)
			}
		}
	}
	if code, _, _ := get(t, n.URL+"/_postern/nope"); code != 404 {
		t.Fatalf("unknown page path: %d", code)
	}
	// A subscriber and a message show in the status.
	res, err := http.Post(n.URL+"/c/status-demo", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	st := status(t, n.URL)
	for _, k := range []string{"node", "rates", "history", "tunnels", "inbox", "channels", "relay", "expose", "cluster", "store"} {
		if st[k] == nil {
			t.Fatalf("status lacks %q: %v", k, st)
		}
	}
	if st["channels"]["prefix"] != "/c" || st["channels"]["published"] != 1.0 || st["store"]["engine"] != "memory" ||
		st["expose"]["connected_agents"] != 0.0 || st["relay"]["connected_backends"] != 0.0 || st["channels"]["history_channels"] != 1.0 {
		t.Fatalf("status %v", st)
	}
	for _, k := range []string{"http_requests", "channel_messages", "channel_deliveries", "tunnel_messages", "tunnel_deliveries",
		"inbox_messages", "inbox_received", "relay_requests", "expose_requests"} {
		if _, ok := st["rates"][k]; !ok {
			t.Fatalf("rates lack %q: %v", k, st["rates"])
		}
	}
}

func TestStatusAtRoot(t *testing.T) {
	cfg := servertest.Config()
	cfg.Channels.AtRoot = true
	n := servertest.Start(t, cfg)
	// "/" is a channel now; the page moved.
	if _, _, body := get(t, n.URL+"/"); !strings.Contains(body, "<h1>/</h1>") {
		t.Fatal("GET / is not the channel page at root mode")
	}
	if _, _, body := get(t, n.URL+web.PagePath); !strings.Contains(body, "<title>postern</title>") {
		t.Fatal("status page missing at " + web.PagePath)
	}
	if st := status(t, n.URL); st["channels"]["prefix"] != "" {
		t.Fatalf("prefix %v", st["channels"]["prefix"])
	}
}

func TestSectionsAndRates(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "demo_total", Help: "demo"})
	reg.MustRegister(c)
	now := time.Unix(1000, 0)
	w := web.New(web.Options{Gatherer: reg, Rates: []web.Rate{{Name: "demo", Metric: "demo_total"}}, Now: func() time.Time { return now }})
	w.Section("agents", func(context.Context) any { return map[string]int{"connected": 3} })
	if st := w.Status(context.Background()); st["rates"].(map[string]float64)["demo"] != 0 || st["agents"].(map[string]int)["connected"] != 3 {
		t.Fatalf("status %v", st)
	}
	c.Add(10)
	now = now.Add(2 * time.Second)
	if r := w.Status(context.Background())["rates"].(map[string]float64)["demo"]; r != 5 {
		t.Fatalf("rate %v, want 5/s", r)
	}
	mux := httpapi.NewRoutes(nil)
	w.Mount(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", web.StatusPath, nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"agents":{"connected":3}`) {
		t.Fatalf("status through the router: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/other", nil))
	if rec.Code != 404 {
		t.Fatalf("the page claims other paths: %d", rec.Code)
	}
}

// TestPageInChromium loads the page in a real headless Chromium (through
// chromedp) while a relay backend, two expose agents and traffic on every
// capability run: the five capability cards show their figures, the names
// (the browser is on loopback) and a chart of each rate that rises with
// the traffic; the channel panel watches a channel and publishes to it.
// POSTERN_UPDATE_SCREENSHOT=1 writes the screenshot to docs/web-page.png.
func TestPageInChromium(t *testing.T) {
	ctx := browsertest.Tab(t)
	cfg := servertest.Config()
	cfg.NodeID = "node-1"
	cfg.StatusInterval = 250 * time.Millisecond
	n := servertest.Start(t, cfg)
	act := startActivity(t, n)
	defer act.stop()

	page, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	run(t, page, chromedp.Navigate(n.URL+"/"))
	waitFor(t, page, `document.body.dataset.ready === "1" && ["tunnels", "inbox", "channels", "relay", "expose", "http"].every(function (k) { return document.getElementById("status-" + k); })`)
	// Names, on loopback: the relay backend and the exposed name with its
	// two agents.
	waitFor(t, page, `(document.getElementById("names-relay") || {}).textContent.indexOf("robot-1") >= 0`)
	waitFor(t, page, `/demo\s*2 agents/.test((document.getElementById("names-expose") || {}).textContent)`)
	// Every chart draws its rates, and the traffic lifts each above zero.
	for card, lines := range map[string]int{"tunnels": 2, "inbox": 2, "channels": 2, "relay": 1, "expose": 1, "http": 1} {
		waitFor(t, page, `document.querySelectorAll("#status-`+card+` svg.chart polyline").length === `+strconv.Itoa(lines)+` &&
			Array.from(document.querySelectorAll("#status-`+card+` svg.chart polyline")).some(function (p) {
				var pts = p.getAttribute("points").split(" ");
				return pts.length > 3 && pts.some(function (pt) { return parseFloat(pt.split(",")[1]) < 77; });
			})`)
	}
	waitFor(t, page, `/long-polls/.test(document.getElementById("status-tunnels").textContent) && /node-1/.test(document.getElementById("node").textContent)`)

	// The channel panel: watch, receive what is published over HTTP (as
	// text, never markup), publish from the page.
	run(t, page,
		chromedp.SetValue(chromedp.CSS("#channel"), "/e2e/room"),
		chromedp.Click(chromedp.CSS("#watch")),
	)
	n.WaitForSubscribers(t, "/e2e/room", 1)
	waitFor(t, page, `document.getElementById("watch-state").textContent === "watching /e2e/room"`)
	for _, msg := range []string{"hello from http", "second <b>message</b>"} {
		res, err := http.Post(n.URL+"/c/e2e/room", "text/plain", strings.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("POST: %d", res.StatusCode)
		}
		js, _ := json.Marshal(msg)
		waitFor(t, page, `Array.from(document.querySelectorAll("#messages li")).some(function (li) { return li.textContent.indexOf(`+string(js)+`) >= 0; })`)
	}
	if v := eval[int](t, page, `document.querySelectorAll("#messages li b").length`); v != 0 {
		t.Fatalf("message markup was interpreted: %d", v)
	}
	run(t, page,
		chromedp.SetValue(chromedp.CSS("#message"), "typed in the page"),
		chromedp.Click(chromedp.CSS("#publish")),
	)
	waitFor(t, page, `Array.from(document.querySelectorAll("#messages li")).some(function (li) { return li.textContent.indexOf("typed in the page") >= 0; })`)
	waitFor(t, page, `/subscribers/.test(document.getElementById("status-channels").textContent)`)

	shot, err := chromedp.Run(page, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(shot)); err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	out := filepath.Join(t.TempDir(), "web-page.png")
	if os.Getenv("POSTERN_UPDATE_SCREENSHOT") == "1" {
		out = filepath.Join("..", "..", "docs", "web-page.png")
	}
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStatusNames: the status names the relay backends and the exposed
// names with their agents to its readers, who are all private (the ops
// gate lets only this host, an ops grant or --ops-listen read it): through
// a proxy, from elsewhere, the status answers 403 and shows nothing.
func TestStatusNames(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	act := startActivity(t, n)
	defer act.stop()
	st := status(t, n.URL)
	if st["relay"]["connected_backends"] != 1.0 || st["expose"]["connected_agents"] != 1.0 || st["node"]["private"] != true {
		t.Fatalf("status on loopback: %v", st)
	}
	if b, _ := json.Marshal(st["relay"]["backends"]); string(b) != `[{"connections":1,"name":"robot-1"}]` {
		t.Fatalf("relay backends: %s", b)
	}
	if b, _ := json.Marshal(st["expose"]["agents"]); string(b) != `[{"connections":2,"name":"demo"}]` {
		t.Fatalf("expose agents: %s", b)
	}
	req, _ := http.NewRequest("GET", n.URL+web.StatusPath, nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 403 || strings.Contains(string(body), "robot-1") || strings.Contains(string(body), "demo") {
		t.Fatalf("status through a proxy: %d %s", res.StatusCode, body)
	}
}

// activity is a relay backend, two expose agents named demo, and traffic
// on every capability, until stop.
type activity struct {
	cancel context.CancelFunc
	done   sync.WaitGroup
}

func startActivity(t *testing.T, n *servertest.Node) *activity {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	t.Cleanup(backend.Close)
	ctx, cancel := context.WithCancel(context.Background())
	a := &activity{cancel: cancel}
	rc, err := gcrclient.New(gcrclient.Options{RelayURL: n.URL, ServerName: "robot-1", BackendURL: backend.URL})
	if err != nil {
		t.Fatal(err)
	}
	a.done.Go(func() { rc.Run(ctx) })
	c, err := client.New(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ready := make(chan struct{}, 2)
	for range 2 {
		a.done.Go(func() {
			c.Expose(ctx, client.ExposeOptions{Name: "demo", Local: backend.URL, Logger: quiet, OnReady: func(string) { ready <- struct{}{} }})
		})
	}
	<-ready
	<-ready
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := n.WaitForRelayPolls(wctx, "robot-1", 1); err != nil {
		t.Fatal(err)
	}
	sub, err := c.Channel("/busy").Subscribe(ctx, client.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.done.Go(func() {
		defer sub.Close()
		for range sub.Messages() {
		}
	})
	a.done.Go(func() {
		hc := &http.Client{Transport: &http.Transport{}}
		defer hc.CloseIdleConnections()
		get := func(path string) {
			if res, err := hc.Get(n.URL + path); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			c.Tunnel("work").Send(ctx, []byte("job"), client.SendOptions{})
			c.Tunnel("work").Receive(ctx, client.ReceiveOptions{})
			c.Inbox("a").Send(ctx, client.Envelope{IdempotencyKey: client.NewIdempotencyKey(), Destination: []string{"b"}, Body: []byte("1")})
			c.Inbox("b").Receive(ctx)
			c.Channel("/busy").Publish(ctx, []byte("tick"))
			get("/client/robot-1/")
			get("/proxy/request/demo/")
		}
	})
	return a
}

func (a *activity) stop() {
	a.cancel()
	a.done.Wait()
	http.DefaultClient.CloseIdleConnections()
}
