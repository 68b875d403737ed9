package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/httpapi"
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
		for _, bad := range []string{"src=", "href=", "http://", "https://"} {
			if strings.Contains(body, bad) {
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
	for _, k := range []string{"node", "rates", "tunnels", "channels", "relay", "expose", "cluster", "store"} {
		if st[k] == nil {
			t.Fatalf("status lacks %q: %v", k, st)
		}
	}
	if st["channels"]["prefix"] != "/c" || st["channels"]["published"] != 1.0 || st["store"]["engine"] != "memory" ||
		st["expose"]["connected_agents"] != 0.0 || st["relay"]["connected_backends"] != 0.0 {
		t.Fatalf("status %v", st)
	}
	for _, k := range []string{"http_requests", "channel_messages", "channel_deliveries", "tunnel_messages", "inbox_messages", "relay_requests"} {
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

// TestPageInChromium loads the page in a real headless Chromium, watches
// a channel from it, publishes over HTTP and checks the message appears;
// then publishes from the page itself. POSTERN_UPDATE_SCREENSHOT=1 writes
// the screenshot to docs/web-page.png.
func TestPageInChromium(t *testing.T) {
	b := startBrowser(t)
	cfg := servertest.Config()
	cfg.NodeID = "node-1"
	n := servertest.Start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	b.navigate(ctx, n.URL+"/")
	b.eval(ctx, waitFor(`document.body.dataset.ready === "1" && document.getElementById("status-channels")`))
	b.eval(ctx, `document.getElementById("channel").value = "/e2e/room"; document.getElementById("watch").click(); true`)
	n.WaitForSubscribers(t, "/e2e/room", 1)
	b.eval(ctx, waitFor(`document.getElementById("watch-state").textContent === "watching /e2e/room"`))

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
		b.eval(ctx, waitFor(`Array.from(document.querySelectorAll("#messages li")).some(function (li) { return li.textContent.indexOf(`+string(js)+`) >= 0; })`))
	}
	// Markup in a message is shown as text, never interpreted.
	if v := b.eval(ctx, `document.querySelectorAll("#messages li b").length`); string(v) != "0" {
		t.Fatalf("message markup was interpreted: %s", v)
	}
	// Publish from the page: it comes back through the watched channel.
	b.eval(ctx, `document.getElementById("message").value = "typed in the page"; document.getElementById("publish").click(); true`)
	b.eval(ctx, waitFor(`Array.from(document.querySelectorAll("#messages li")).some(function (li) { return li.textContent.indexOf("typed in the page") >= 0; })`))
	// The status cards follow the channel: one subscriber; and name the
	// node.
	b.eval(ctx, waitFor(`/subscribers\s*1/.test(document.getElementById("status-channels").textContent)`))
	b.eval(ctx, waitFor(`/node\s*node-1/.test(document.getElementById("status-cluster").textContent)`))

	shot := b.screenshot(ctx)
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
