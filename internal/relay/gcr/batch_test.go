package gcr_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/gcr"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
	"github.com/postern/postern/internal/relay/gcr/wire"
	"github.com/postern/postern/internal/relay/relaytest"
)

// lone is a relay front door served alone (no node around it), so that
// tests can wait on its own readiness signals and watch its traffic.
type lone struct {
	*env
	g   *gcr.Relay
	url string
	// Counted exchanges: poll answers and posts in batches.
	batchPolls, batchPosts atomic.Int64
}

func startLone(t *testing.T) *lone {
	t.Helper()
	deps := capability.Deps{Logger: slog.New(slog.DiscardHandler)}
	hub, err := relay.New(relay.DefaultOptions("relay"), deps)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gcr.New(hub, gcr.DefaultOptions(), deps)
	if err != nil {
		t.Fatal(err)
	}
	rt := httpapi.NewRoutes(nil)
	g.Mount(rt)
	l := &lone{g: g}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == gcr.ResponsePath && r.Header.Get("Content-Type") == wire.BatchContentType {
			l.batchPosts.Add(1)
		}
		rt.ServeHTTP(&batchCounter{ResponseWriter: w, n: &l.batchPolls}, r)
	}))
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // cut what is left at once
		g.Shutdown(ctx)
		srv.CloseClientConnections()
		srv.Close()
	})
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	l.env = &env{t: t, node: nil, c: &http.Client{Transport: tr}}
	l.url = srv.URL
	return l
}

// batchCounter counts answers of wire.BatchContentType.
type batchCounter struct {
	http.ResponseWriter
	n       *atomic.Int64
	written bool
}

func (b *batchCounter) count() {
	if !b.written && b.Header().Get("Content-Type") == wire.BatchContentType {
		b.n.Add(1)
	}
	b.written = true
}

func (b *batchCounter) WriteHeader(code int) {
	b.count()
	b.ResponseWriter.WriteHeader(code)
}

func (b *batchCounter) Write(p []byte) (int, error) {
	b.count()
	return b.ResponseWriter.Write(p)
}

func (b *batchCounter) Unwrap() http.ResponseWriter { return b.ResponseWriter }

// get sends a request to the lone server.
func (l *lone) get(path string) <-chan result {
	ch := make(chan result, 1)
	go func() { ch <- l.doCtx(context.Background(), "GET", l.url+path, nil) }()
	return ch
}

// pollBatch is one poll asking for up to n requests; it returns the
// answer and the requests of a batch answer.
func (l *lone) pollBatch(name string, n int) (result, []*wire.Request) {
	l.t.Helper()
	r := l.doCtx(context.Background(), "GET", l.url+gcr.RequestPath+"?server="+url.QueryEscape(name), nil, wire.BatchHeader, fmt.Sprint(n))
	if r.status != 200 || r.h.Get("Content-Type") != wire.BatchContentType {
		return r, nil
	}
	parts, err := wire.SplitDelimited([]byte(r.body))
	if err != nil {
		l.t.Fatalf("batch answer: %v", err)
	}
	var reqs []*wire.Request
	for _, p := range parts {
		req, err := wire.UnmarshalRequest(p)
		if err != nil {
			l.t.Fatalf("batch answer: %v", err)
		}
		reqs = append(reqs, req)
	}
	return r, reqs
}

// post is one POST /server/response of a single message.
func (l *lone) post(m *wire.Response) result {
	l.t.Helper()
	return l.doCtx(context.Background(), "POST", l.url+gcr.ResponsePath, bytes.NewReader(m.Marshal()), "Content-Type", wire.ResponseContentType)
}

func (l *lone) postBatch(msgs ...*wire.Response) result {
	l.t.Helper()
	var b []byte
	for _, m := range msgs {
		b = wire.AppendDelimited(b, m.Marshal())
	}
	return l.doCtx(context.Background(), "POST", l.url+gcr.ResponsePath, bytes.NewReader(b), "Content-Type", wire.BatchContentType)
}

func done(id, body string) *wire.Response {
	return &wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte(body), EOF: true,
		Headers: []wire.Header{{Name: "Content-Type", Value: "text/plain"}}}
}

// TestBatchedPollsAndPosts: a poll that asks for a batch gets the
// requests waiting, up to the number it asked for, in one answer, and a
// post of several complete responses answers each user; a poll that does
// not ask (the original client) gets one HttpRequest as always. A batch
// posted again is refused (400) as a single post for a finished request
// is.
func TestBatchedPollsAndPosts(t *testing.T) {
	l := startLone(t)
	ctx := ctxT(t)
	first := make(chan *wire.Request, 1)
	go func() {
		r := l.doCtx(context.Background(), "GET", l.url+gcr.RequestPath+"?server=b", nil)
		if ct := r.h.Get("Content-Type"); r.status != 200 || ct != wire.RequestContentType {
			t.Errorf("plain poll: %d %q", r.status, ct)
		}
		req, err := wire.UnmarshalRequest([]byte(r.body))
		if err != nil {
			t.Error(err)
		}
		first <- req
	}()
	if err := l.g.WaitForPolls(ctx, "b", 1); err != nil {
		t.Fatal(err)
	}
	a := l.get("/client/b/a")
	reqA := <-first

	users := map[string]<-chan result{}
	for _, p := range []string{"/x", "/y", "/z"} {
		users[p] = l.get("/client/b" + p)
	}
	if err := l.g.WaitForWaiting(ctx, "b", 3); err != nil {
		t.Fatal(err)
	}
	r, two := l.pollBatch("b", 2)
	if r.status != 200 || len(two) != 2 {
		t.Fatalf("batch poll for 2: %d %q, %d requests", r.status, r.h.Get("Content-Type"), len(two))
	}
	if r.h.Get(wire.StreamHeader) == "" {
		t.Error("a batch answer does not say the node streams bodies")
	}
	r, one := l.pollBatch("b", 8)
	if r.status != 200 || len(one) != 1 {
		t.Fatalf("batch poll for 8 with one waiting: %d, %d requests", r.status, len(one))
	}
	if p := l.post(done(reqA.ID, "A")); p.status != 200 {
		t.Fatalf("single post: %d %q", p.status, p.body)
	}
	var msgs []*wire.Response
	for _, req := range append(two, one...) {
		u, _ := url.Parse(req.URL)
		msgs = append(msgs, done(req.ID, "body of "+u.Path))
	}
	if p := l.postBatch(msgs...); p.status != 200 || p.body != "ok" {
		t.Fatalf("batch post: %d %q", p.status, p.body)
	}
	l.want(<-a, 200, "A")
	for p, ch := range users {
		l.want(<-ch, 200, "body of "+p)
	}
	if p := l.postBatch(msgs...); p.status != 400 || !strings.Contains(p.body, msgs[0].ID) {
		t.Fatalf("batch posted again: %d %q", p.status, p.body)
	}
}

// TestBadBatchesAreRefused: a batch that does not decode, or holds a
// message without id, is refused whole with 400.
func TestBadBatchesAreRefused(t *testing.T) {
	l := startLone(t)
	for name, body := range map[string][]byte{
		"empty":         nil,
		"cut length":    {0x80},
		"cut message":   {5, 1, 2},
		"not protobuf":  wire.AppendDelimited(nil, []byte{0xff, 0xff}),
		"without an id": wire.AppendDelimited(nil, (&wire.Response{HasStatus: true, StatusCode: 200, EOF: true}).Marshal()),
	} {
		r := l.doCtx(context.Background(), "POST", l.url+gcr.ResponsePath, bytes.NewReader(body), "Content-Type", wire.BatchContentType)
		if r.status != 400 || r.body == "" {
			t.Errorf("%s: %d %q", name, r.status, r.body)
		}
	}
}

// TestSharedNodesDoNotOfferBatches: a node that shares its backends
// answers a poll asking for a batch with one HttpRequest (a response may
// be posted to another node, which forwards it as it came).
func TestSharedNodesDoNotOfferBatches(t *testing.T) {
	dir := relaytest.NewDirectory()
	a := start(t, func(c *node.Config) { c.Directory = dir })
	polled := make(chan *wire.Request, 1)
	go func() {
		_, req := a.poll("w", wire.BatchHeader, "8") // fails on any other Content-Type
		polled <- req
	}()
	if err := a.node.WaitForRelayPolls(ctxT(t), "w", 1); err != nil {
		t.Fatal(err)
	}
	res := a.async("GET", "/client/w/", nil)
	req := <-polled
	if req == nil {
		t.Fatal("no request")
	}
	if r := a.post(done(req.ID, "w")); r.status != 200 {
		t.Fatalf("post: %d %q", r.status, r.body)
	}
	a.want(<-res, 200, "w")
}

// TestTunedClientBatchesUnderLoad: postern relay's client against a node
// that offers batches takes its requests in batch answers and posts short
// responses in batches, and every user gets its own answer (concurrent
// requests, small and large bodies mixed).
func TestTunedClientBatchesUnderLoad(t *testing.T) {
	l := startLone(t)
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/large" {
			w.Write(bytes.Repeat([]byte("L"), 200<<10))
			return
		}
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, body)
	})
	o := gcrclient.Tuned(gcrclient.Options{RelayURL: l.url, ServerName: "busy", BackendURL: be})
	c, err := gcrclient.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-stopped
	}()
	if err := l.g.WaitForPolls(ctxT(t), "busy", o.NumPendingRequests); err != nil {
		t.Fatal(err)
	}
	const users, each = 16, 20
	var wg sync.WaitGroup
	for u := range users {
		wg.Go(func() {
			for i := range each {
				path := fmt.Sprintf("/u%d/%d", u, i)
				if i%7 == 3 {
					r := l.doCtx(context.Background(), "GET", l.url+"/client/busy/large", nil)
					if r.err != nil || r.status != 200 || len(r.body) != 200<<10 {
						t.Errorf("large: %d, %d bytes, %v", r.status, len(r.body), r.err)
					}
					continue
				}
				r := l.doCtx(context.Background(), "POST", l.url+"/client/busy"+path, strings.NewReader(path))
				if want := "POST " + path + " " + path; r.err != nil || r.status != 200 || r.body != want {
					t.Errorf("got %d %q %v, want %q", r.status, r.body, r.err, want)
				}
			}
		})
	}
	wg.Wait()
	if l.batchPolls.Load() == 0 || l.batchPosts.Load() == 0 {
		t.Errorf("batch answers %d, batch posts %d: the client did not batch", l.batchPolls.Load(), l.batchPosts.Load())
	}
}

// TestLargeBatchesStopAtTheirSize: a batch answer takes no more requests
// once it holds 1 MiB (the one that crosses it is in), and large
// requests reach the relay client whole.
func TestLargeBatchesStopAtTheirSize(t *testing.T) {
	l := startLone(t)
	ctx := ctxT(t)
	first := make(chan struct{})
	go func() {
		defer close(first)
		l.doCtx(context.Background(), "GET", l.url+gcr.RequestPath+"?server=big", nil)
	}()
	if err := l.g.WaitForPolls(ctx, "big", 1); err != nil {
		t.Fatal(err)
	}
	l.get("/client/big/registered") // taken by the plain poll, never answered
	<-first
	bodies := map[string][]byte{}
	for i, c := range []string{"a", "b", "c"} {
		bodies["/"+c] = bytes.Repeat([]byte(c), 600<<10+i)
		go l.doCtx(context.Background(), "PUT", l.url+"/client/big/"+c, bytes.NewReader(bodies["/"+c]))
		if err := l.g.WaitForWaiting(ctx, "big", i+1); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for _, want := range []int{2, 1} {
		r, reqs := l.pollBatch("big", 8)
		if r.status != 200 || len(reqs) != want {
			t.Fatalf("batch poll: %d, %d requests, want %d", r.status, len(reqs), want)
		}
		for _, req := range reqs {
			u, _ := url.Parse(req.URL)
			if !bytes.Equal(req.Body, bodies[u.Path]) {
				t.Fatalf("%s: body of %d bytes, want %d", u.Path, len(req.Body), len(bodies[u.Path]))
			}
			got++
		}
	}
	if got != 3 {
		t.Fatalf("%d requests", got)
	}
}
