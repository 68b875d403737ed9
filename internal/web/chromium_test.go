package web_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// browser is a headless Chromium driven over the DevTools protocol, with
// coder/websocket as the transport.
type browser struct {
	t    *testing.T
	cmd  *exec.Cmd
	conn *websocket.Conn // the page target

	mu      sync.Mutex
	nextID  int
	waiting map[int]chan cdpReply
	events  chan cdpEvent
	done    chan struct{}
}

type cdpReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

type cdpEvent struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
}

// chromiumPath finds Debian's chromium; without it the test skips, except
// on CI, where it must be there (.ci/run installs it).
func chromiumPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (Debian package chromium); CI must have it")
	}
	t.Skip("chromium is not installed (apt-get install chromium); skipping the browser test")
	return ""
}

// startBrowser launches Chromium with a blank page and connects to it.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath(t)
	cmd := exec.Command(path,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
		"--window-size=1200,860", "about:blank")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	b := &browser{t: t, cmd: cmd, waiting: map[int]chan cdpReply{}, events: make(chan cdpEvent, 256), done: make(chan struct{})}
	addr := make(chan string, 1)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		sc := bufio.NewScanner(stderr)
		var logs []string
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, "DevTools listening on "); ok {
				addr <- rest
			} else if len(logs) < 50 {
				logs = append(logs, line)
			}
		}
		close(addr)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-drained
		cmd.Wait()
	})
	var browserURL string
	select {
	case u, ok := <-addr:
		if !ok {
			t.Fatal("chromium exited before its DevTools endpoint was up")
		}
		browserURL = u
	case <-time.After(60 * time.Second):
		t.Fatal("chromium did not start its DevTools endpoint within 60 s")
	}
	// The page target of about:blank, from the endpoint's target list.
	host := strings.TrimPrefix(browserURL, "ws://")
	host = host[:strings.IndexByte(host, '/')]
	res, err := http.Get("http://" + host + "/json/list")
	if err != nil {
		t.Fatal(err)
	}
	var targets []struct {
		Type string `json:"type"`
		WS   string `json:"webSocketDebuggerUrl"`
	}
	err = json.NewDecoder(res.Body).Decode(&targets)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	pageURL := ""
	for _, tg := range targets {
		if tg.Type == "page" {
			pageURL = tg.WS
			break
		}
	}
	if pageURL == "" {
		t.Fatalf("no page target in %+v", targets)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, pageURL, nil)
	if err != nil {
		t.Fatalf("DevTools websocket: %v", err)
	}
	conn.SetReadLimit(64 << 20) // screenshots
	b.conn = conn
	go b.readLoop()
	t.Cleanup(func() {
		conn.CloseNow()
		<-b.done
	})
	return b
}

func (b *browser) readLoop() {
	defer close(b.done)
	for {
		_, data, err := b.conn.Read(context.Background())
		if err != nil {
			b.mu.Lock()
			for id, ch := range b.waiting {
				close(ch)
				delete(b.waiting, id)
			}
			b.mu.Unlock()
			return
		}
		var msg struct {
			ID int `json:"id"`
			cdpReply
			cdpEvent
		}
		if json.Unmarshal(data, &msg) != nil {
			continue
		}
		if msg.ID == 0 {
			select {
			case b.events <- msg.cdpEvent:
			default: // nobody waits for this kind of event
			}
			continue
		}
		b.mu.Lock()
		ch := b.waiting[msg.ID]
		delete(b.waiting, msg.ID)
		b.mu.Unlock()
		if ch != nil {
			ch <- msg.cdpReply
		}
	}
}

// call sends one DevTools command and waits for its result.
func (b *browser) call(ctx context.Context, method string, params any, result any) error {
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpReply, 1)
	b.waiting[id] = ch
	b.mu.Unlock()
	req, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	if err := b.conn.Write(ctx, websocket.MessageText, req); err != nil {
		return err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return errors.New("DevTools connection closed")
		}
		if r.Error != nil {
			return fmt.Errorf("%s: %s", method, r.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(r.Result, result)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// navigate loads url and waits for its load event.
func (b *browser) navigate(ctx context.Context, url string) {
	b.t.Helper()
	if err := b.call(ctx, "Page.enable", nil, nil); err != nil {
		b.t.Fatal(err)
	}
	if err := b.call(ctx, "Page.navigate", map[string]any{"url": url}, nil); err != nil {
		b.t.Fatal(err)
	}
	for {
		select {
		case ev := <-b.events:
			if ev.Method == "Page.loadEventFired" {
				return
			}
		case <-ctx.Done():
			b.t.Fatalf("page %s did not load: %v", url, ctx.Err())
		}
	}
}

// eval runs a script in the page, awaiting it if it returns a promise,
// and returns its value as JSON.
func (b *browser) eval(ctx context.Context, script string) json.RawMessage {
	b.t.Helper()
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	err := b.call(ctx, "Runtime.evaluate", map[string]any{"expression": script, "awaitPromise": true, "returnByValue": true}, &res)
	if err != nil {
		b.t.Fatalf("eval %q: %v", script, err)
	}
	if res.Exception != nil {
		b.t.Fatalf("eval %q: %s %s", script, res.Exception.Text, res.Exception.Exception.Description)
	}
	return res.Result.Value
}

// screenshot returns a PNG of the whole page.
func (b *browser) screenshot(ctx context.Context) []byte {
	b.t.Helper()
	var lm struct {
		Content struct {
			Width  float64 `json:"width"`
			Height float64 `json:"height"`
		} `json:"cssContentSize"`
	}
	if err := b.call(ctx, "Page.getLayoutMetrics", nil, &lm); err != nil {
		b.t.Fatal(err)
	}
	var res struct {
		Data string `json:"data"`
	}
	params := map[string]any{"format": "png", "captureBeyondViewport": true,
		"clip": map[string]any{"x": 0, "y": 0, "width": lm.Content.Width, "height": lm.Content.Height, "scale": 1}}
	if err := b.call(ctx, "Page.captureScreenshot", params, &res); err != nil {
		b.t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(res.Data)
	if err != nil {
		b.t.Fatal(err)
	}
	return png
}

// waitFor is a script that resolves once cond (a JavaScript expression) is
// true, checking on every DOM change; it rejects after the page's own
// 20 s budget so a failure names what it waited for.
func waitFor(cond string) string {
	return `new Promise(function (resolve, reject) {
  var check = function () { try { return !!(` + cond + `); } catch (e) { return false; } };
  if (check()) { resolve(true); return; }
  var obs = new MutationObserver(function () { if (check()) { obs.disconnect(); resolve(true); } });
  obs.observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
  setTimeout(function () { obs.disconnect(); reject(new Error("timed out waiting for: ` + strings.ReplaceAll(cond, `"`, `'`) + `")); }, 20000);
})`
}
