package cli_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/gcr/wire"
)

// backendServer is the service behind NAT: it answers with what it got.
func backendServer(t *testing.T) *httptest.Server {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", "yes")
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), body)
	}))
	t.Cleanup(be.Close)
	return be
}

func httpDo(t *testing.T, method, url, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

var requestLog = regexp.MustCompile(`level=INFO msg=request method=POST host=\S+ path=/api/echo status=200 bytes=\d+ elapsed=\S+ client=`)

// TestRelayServesThroughPostern (issue point 4): postern relay serves a
// backend through postern under its name, logs one line per request as
// expose does, reconnects when the server restarts, and stops on SIGINT.
func TestRelayServesThroughPostern(t *testing.T) {
	n := startNode(t, nil)
	be := backendServer(t)
	relay := startBin(t, nil, "relay", "--server", n.URL, "--name", "robot-1", be.URL)
	if l := relay.line(); l != "Forwarding "+n.URL+"/client/robot-1/ -> "+be.URL {
		t.Fatalf("relay printed %q", l)
	}
	waitPolls := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := n.srv.WaitForRelayPolls(ctx, "robot-1", 1); err != nil {
			t.Fatal(err)
		}
	}
	waitPolls()
	code, h, body := httpDo(t, "POST", n.URL+"/client/robot-1/api/echo?x=1", "ping")
	if code != 200 || body != "POST /api/echo?x=1 ping" || h.Get("X-Backend") != "yes" {
		t.Fatalf("through the relay: %d %q %v", code, body, h)
	}
	if !relay.stderr.waitFor(relay.exited, requestLog.MatchString) {
		t.Fatalf("no request line: %s", relay.stderr)
	}

	// A restart of the server: the relay reconnects and serves again.
	n.stop()
	n.start()
	if l := relay.line(); l != "Forwarding "+n.URL+"/client/robot-1/ -> "+be.URL {
		t.Fatalf("after the restart the relay printed %q", l)
	}
	waitPolls()
	if code, _, body := httpDo(t, "GET", n.URL+"/client/robot-1/again", ""); code != 200 || body != "GET /again " {
		t.Fatalf("after the restart: %d %q", code, body)
	}
	code, _ = relay.stop(syscall.SIGINT)
	errs := relay.stderr.String()
	if code != 0 || !strings.Contains(errs, `msg="relay: disconnected, reconnecting"`) || strings.Count(errs, `msg="relay: ready"`) != 2 || !strings.Contains(errs, `msg="relay: stopped"`) {
		t.Fatalf("exit %d, logs:\n%s", code, errs)
	}
}

// TestRelayNeedsItsGrant: against a server with a token file, the relay
// without a token granted serve on /relay/NAME stops at once, saying which
// grant it needs (exit 5); with one it serves.
func TestRelayNeedsItsGrant(t *testing.T) {
	tokens := filepath.Join(t.TempDir(), "tokens.toml")
	os.WriteFile(tokens, []byte("[[token]]\nname = \"robot\"\nsecret = \"robot-secret-000001\"\n[[token.grant]]\nactions = [\"serve\"]\npaths = [\"/relay/robot-1\"]\n"+
		"[[anonymous.grant]]\nactions = [\"call\"]\npaths = [\"/relay/*\"]\n"), 0o600)
	n := startNode(t, func(c *node.Config) { c.TokenFile = tokens })
	be := backendServer(t)
	r := runBin(t, nil, "", "relay", "--server", n.URL, "--name", "robot-1", be.URL)
	if r.code != cli.ExitDenied || !strings.Contains(r.stderr, `postern relay: 403: serving "robot-1" needs a token granted "serve" on /relay/robot-1 (--token or POSTERN_TOKEN)`) {
		t.Fatalf("relay without a token: %d %q", r.code, r.stderr)
	}
	relay := startBin(t, []string{"POSTERN_TOKEN=robot-secret-000001"}, "relay", "--server", n.URL, "--name", "robot-1", be.URL)
	relay.line()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.srv.WaitForRelayPolls(ctx, "robot-1", 1); err != nil {
		t.Fatal(err)
	}
	if code, _, body := httpDo(t, "GET", n.URL+"/client/robot-1/x", ""); code != 200 || body != "GET /x " {
		t.Fatalf("with the token: %d %q", code, body)
	}
}

// TestRelayAgainstTheOriginalProtocol (issue point 4): postern relay works
// against a relay server that speaks exactly the original
// http-relay-server's protocol (../shared/specs/gcr-relay.md); the
// original itself cannot be built here, so origRelay plays it.
func TestRelayAgainstTheOriginalProtocol(t *testing.T) {
	orig := newOrigRelay(t)
	be := backendServer(t)
	relay := startBin(t, nil, "relay", "--server", orig.srv.URL, "--name", "robot-1", "--pending-requests", "1", be.URL)
	if l := relay.line(); l != "Forwarding "+orig.srv.URL+"/client/robot-1/ -> "+be.URL {
		t.Fatalf("relay printed %q", l)
	}
	orig.waitPoll("robot-1")
	code, h, body := httpDo(t, "POST", orig.srv.URL+"/client/robot-1/api/echo?x=1", "ping")
	if code != 200 || body != "POST /api/echo?x=1 ping" || h.Get("X-Backend") != "yes" {
		t.Fatalf("through the original protocol: %d %q %v", code, body, h)
	}
	if !relay.stderr.waitFor(relay.exited, requestLog.MatchString) {
		t.Fatalf("no request line: %s", relay.stderr)
	}
	if code, _ := relay.stop(syscall.SIGINT); code != 0 {
		t.Fatalf("relay exit %d: %s", code, relay.stderr)
	}
}

// origRelay is a relay server as the original http-relay-server behaves
// on the wire: /server/request long-polls (408 after its poll timeout),
// /server/response takes HttpResponse chunks (400 for an unknown id),
// /client/NAME/... relays (503 "unknown client" for a name never polled),
// /healthz answers ok. It holds its state in memory, as the original.
type origRelay struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	known   map[string]bool
	queues  map[string]chan *wire.Request
	pending map[string]chan *wire.Response
	polled  chan string
}

func newOrigRelay(t *testing.T) *origRelay {
	o := &origRelay{t: t, known: map[string]bool{}, queues: map[string]chan *wire.Request{}, pending: map[string]chan *wire.Response{}, polled: make(chan string, 100)}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("/server/request", o.serverRequest)
	mux.HandleFunc("/server/response", o.serverResponse)
	mux.HandleFunc("/client/", o.client)
	o.srv = httptest.NewServer(mux)
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origRelay) queue(name string) chan *wire.Request {
	o.mu.Lock()
	defer o.mu.Unlock()
	q := o.queues[name]
	if q == nil {
		q = make(chan *wire.Request)
		o.queues[name] = q
	}
	return q
}

func (o *origRelay) waitPoll(name string) {
	o.t.Helper()
	for {
		select {
		case got := <-o.polled:
			if got == name {
				return
			}
		case <-time.After(20 * time.Second):
			o.t.Fatalf("no poll for %s", name)
		}
	}
}

func (o *origRelay) serverRequest(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("server")
	if name == "" {
		http.Error(w, "Missing server query parameter", http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	o.known[name] = true
	o.mu.Unlock()
	q := o.queue(name)
	o.polled <- name
	select {
	case req := <-q:
		w.Header().Set("Content-Type", wire.RequestContentType)
		w.Write(req.Marshal())
	case <-time.After(5 * time.Second):
		http.Error(w, "No request received within timeout", http.StatusRequestTimeout)
	case <-r.Context().Done():
	}
}

func (o *origRelay) serverResponse(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	resp, err := wire.UnmarshalResponse(b)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	ch := o.pending[resp.ID]
	o.mu.Unlock()
	if ch == nil {
		http.Error(w, "Unknown id", http.StatusBadRequest)
		return
	}
	select {
	case ch <- resp:
		w.Write([]byte("ok"))
	case <-time.After(10 * time.Second):
		http.Error(w, "Timeout", http.StatusBadRequest)
	}
}

func (o *origRelay) client(w http.ResponseWriter, r *http.Request) {
	name, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/client/"), "/")
	o.mu.Lock()
	known := o.known[name]
	o.mu.Unlock()
	if !known {
		http.Error(w, fmt.Sprintf("Cannot reach the client %q; it never connected (unknown client)", name), http.StatusServiceUnavailable)
		return
	}
	var idb [16]byte
	rand.Read(idb[:])
	body, _ := io.ReadAll(r.Body)
	url := "http://invalid/" + rest
	if r.URL.RawQuery != "" {
		url += "?" + r.URL.RawQuery
	}
	req := &wire.Request{ID: name + ":" + hex.EncodeToString(idb[:]), Method: r.Method, URL: url, Body: body, Host: r.Host}
	for k, vs := range r.Header {
		for _, v := range vs {
			req.Headers = append(req.Headers, wire.Header{Name: k, Value: v})
		}
	}
	chunks := make(chan *wire.Response)
	o.mu.Lock()
	o.pending[req.ID] = chunks
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		delete(o.pending, req.ID)
		o.mu.Unlock()
	}()
	select {
	case o.queue(name) <- req:
	case <-time.After(10 * time.Second):
		http.Error(w, "relay client did not pick up the request", http.StatusInternalServerError)
		return
	}
	first := true
	for {
		select {
		case c := <-chunks:
			if first {
				if !c.HasStatus {
					http.Error(w, "Received no header from relay client", http.StatusInternalServerError)
					return
				}
				for _, hd := range c.Headers {
					w.Header().Add(hd.Name, hd.Value)
				}
				w.WriteHeader(int(c.StatusCode))
				first = false
			}
			w.Write(c.Body)
			if c.EOF {
				return
			}
		case <-time.After(60 * time.Second):
			if first {
				http.Error(w, "Timeout after 1m0s", http.StatusGatewayTimeout)
			}
			return
		}
	}
}

// TestRelayLogLinesInBatches: the agent's line per request reaches
// standard error in batches, at most logBatchDelay late, and a warning
// goes at once with the lines before it.
func TestRelayLogLinesInBatches(t *testing.T) {
	var out syncBuffer
	b := cli.NewBatchWriterForTest(&out, time.Hour)
	b.Write([]byte("level=INFO msg=request a\n"))
	b.Write([]byte("level=INFO msg=request b\n"))
	if out.String() != "" {
		t.Fatalf("written before the delay: %q", out.String())
	}
	b.Write([]byte("level=WARN msg=\"relay: disconnected, reconnecting\"\n"))
	if got := out.String(); got != "level=INFO msg=request a\nlevel=INFO msg=request b\nlevel=WARN msg=\"relay: disconnected, reconnecting\"\n" {
		t.Fatalf("after a warning: %q", got)
	}
	b.Write([]byte("level=INFO msg=request c\n"))
	b.Flush()
	if got := out.String(); !strings.HasSuffix(got, "request c\n") {
		t.Fatalf("after Flush: %q", got)
	}
	// With a short delay the line goes by itself.
	var out2 syncBuffer
	b2 := cli.NewBatchWriterForTest(&out2, time.Millisecond)
	b2.Write([]byte("level=INFO msg=request d\n"))
	if !out2.waitFor(nil, func(s string) bool { return s == "level=INFO msg=request d\n" }) {
		t.Fatalf("never written: %q", out2.String())
	}
}
