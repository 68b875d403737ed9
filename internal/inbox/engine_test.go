package inbox_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/inbox"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/memstore"
	"github.com/postern/postern/internal/store/storetest"
)

// serveOn assembles a node around st the way internal/node does (queue
// core, inbox, ops endpoints, request metrics) and serves it on a loopback
// port, for the tests that need to own the engine: its clock, or its
// failures.
func serveOn(t *testing.T, st store.Engine, mutate func(*inbox.Options)) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	deps := capability.Deps{Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	core, err := queue.New(st, queue.Options{Lease: testLease}, deps)
	if err != nil {
		t.Fatal(err)
	}
	opts := inbox.DefaultOptions()
	if mutate != nil {
		mutate(&opts)
	}
	ib, err := inbox.New(core, opts, deps)
	if err != nil {
		t.Fatal(err)
	}
	routes := httpapi.NewRoutes(nil)
	ib.Mount(routes)
	httpapi.MountOps(routes, func(context.Context) error { return nil }, reg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: httpapi.NewMetrics(deps).Wrap(routes), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		<-done
		core.Shutdown(context.Background())
		st.Close()
	})
	return &env{t: t, spec: "custom", url: "http://" + ln.Addr().String(), c: &http.Client{Transport: tr}}
}

// testLease is the delivery lease of the nodes serveOn assembles: short,
// since a settle that keeps failing is retried for as long.
const testLease = time.Second

// faulty is the memory engine with failures switched on by the test:
// appends fail once appendsLeft reaches zero, settles once settlesLeft
// does (negative: never).
type faulty struct {
	store.Engine
	appendsLeft atomic.Int64
	settlesLeft atomic.Int64
}

var errDisk = fmt.Errorf("%w: disk on fire", store.ErrUnavailable)

func (f *faulty) Append(ctx context.Context, key string, m store.Message, opts store.AppendOptions) (store.AppendResult, error) {
	if !allowed(&f.appendsLeft) {
		return store.AppendResult{}, errDisk
	}
	return f.Engine.Append(ctx, key, m, opts)
}

func (f *faulty) Settle(ctx context.Context, key string, ls []store.Lease, delivered bool) error {
	if !allowed(&f.settlesLeft) {
		return errDisk
	}
	return f.Engine.Settle(ctx, key, ls, delivered)
}

// allowed takes one call from budget n: negative is unlimited, zero
// refuses.
func allowed(n *atomic.Int64) bool {
	for {
		v := n.Load()
		switch {
		case v < 0:
			return true
		case v == 0:
			return false
		case n.CompareAndSwap(v, v-1):
			return true
		}
	}
}

func metricsText(e *env) string {
	e.t.Helper()
	return e.do("GET", "/metrics", "").body
}

// TestAckFailures drives the receive path into storage failures: a
// receive whose acks cannot all be stored puts everything back and fails,
// and the retry delivers each message once and each ack once; a receive
// that can neither store its acks nor put its entries back fails too, and
// its entries come back when their lease runs out; one whose entries
// cannot be settled as delivered is answered, and they come again.
func TestAckFailures(t *testing.T) {
	clock := storetest.NewClock()
	st := &faulty{Engine: memstore.New(memstore.Options{Now: clock.Now})}
	st.appendsLeft.Store(-1)
	st.settlesLeft.Store(-1)
	e := serveOn(t, st, func(o *inbox.Options) { o.Now = func() time.Time { return seedTime } })
	msg := func(key, origin, body string, ack bool) string {
		return fmt.Sprintf(`{"type":"msg","idempotencyKey":%q,"origin":%q,"body":%q,"expectsAck":%v,"sentAt":"2020-05-09T20:20:39Z"}`, key, origin, body, ack)
	}
	ackOf := func(key string) string {
		return fmt.Sprintf(`{"type":"ack","idempotencyKey":%q,"destination":"george","receivedAt":"2020-05-09T20:20:39Z"}`, key)
	}
	e.wantJSON(e.post("send", "olivia", `{"idempotencyKey":"fault-key-01","destination":["george"],"body":"one","expectsAck":true}`), `{"sent":1}`)
	e.wantJSON(e.post("send", "maurice", `{"idempotencyKey":"fault-key-02","destination":["george"],"body":"two"}`), `{"sent":1}`)
	e.wantJSON(e.post("send", "olivia", `{"idempotencyKey":"fault-key-03","destination":["george"],"body":"three","expectsAck":true}`), `{"sent":1}`)

	// The first ack is stored, the second fails: 503, nothing delivered.
	st.appendsLeft.Store(1)
	e.wantError(e.post("receive", "george", ""), 503, "Service unavailable", "storage unavailable: disk on fire")
	// Also through exchange, whose own message was stored before.
	st.appendsLeft.Store(0)
	e.wantError(e.post("exchange", "george", `{"idempotencyKey":"fault-key-04","destination":[],"body":null}`), 503, "Service unavailable", "storage unavailable: disk on fire")

	// The retry gets everything, in the original order, and olivia gets
	// each ack once although the first was stored twice.
	st.appendsLeft.Store(-1)
	e.wantJSON(e.post("receive", "george", ""), `[`+msg("fault-key-01", "olivia", "one", true)+`,`+msg("fault-key-02", "maurice", "two", false)+`,`+msg("fault-key-03", "olivia", "three", true)+`]`)
	e.wantJSON(e.post("receive", "george", ""), `[]`)
	e.wantJSON(e.post("receive", "olivia", ""), `[`+ackOf("fault-key-01")+`,`+ackOf("fault-key-03")+`]`)
	if m := metricsText(e); !strings.Contains(m, "postern_inbox_acks_total 2\n") {
		t.Fatalf("ack metrics after the retry:\n%s", grep(m, "postern_inbox_acks"))
	}

	// Neither acks nor putting back work: 503, and the entry is hidden
	// until its lease runs out, then delivered with its ack.
	e.wantJSON(e.post("send", "olivia", `{"idempotencyKey":"fault-key-05","destination":["george"],"body":"five","expectsAck":true}`), `{"sent":1}`)
	st.appendsLeft.Store(0)
	st.settlesLeft.Store(0)
	e.wantError(e.post("receive", "george", ""), 503, "Service unavailable", "storage unavailable: disk on fire")
	st.appendsLeft.Store(-1)
	st.settlesLeft.Store(-1)
	e.wantJSON(e.post("receive", "george", ""), `[]`)
	clock.Advance(testLease)
	e.wantJSON(e.post("receive", "george", ""), `[`+msg("fault-key-05", "olivia", "five", true)+`]`)
	e.wantJSON(e.post("receive", "olivia", ""), `[`+ackOf("fault-key-05")+`]`)

	// Answered, but not settled (the settle is tried until the lease runs
	// out, on the connection the next request waits for): received again
	// once the lease runs out (at-least-once), its ack stored once.
	e.wantJSON(e.post("send", "olivia", `{"idempotencyKey":"fault-key-07","destination":["george"],"body":"seven","expectsAck":true}`), `{"sent":1}`)
	st.settlesLeft.Store(0)
	e.wantJSON(e.post("receive", "george", ""), `[`+msg("fault-key-07", "olivia", "seven", true)+`]`)
	e.wantJSON(e.post("receive", "george", ""), `[]`)
	st.settlesLeft.Store(-1)
	clock.Advance(testLease)
	e.wantJSON(e.post("receive", "george", ""), `[`+msg("fault-key-07", "olivia", "seven", true)+`]`)
	e.wantJSON(e.post("receive", "george", ""), `[]`)
	e.wantJSON(e.post("receive", "olivia", ""), `[`+ackOf("fault-key-07")+`]`)

	// A failing send: 503 in the JSON shape, and a retry with the same key
	// stores each copy once.
	st.appendsLeft.Store(1)
	e.wantError(e.post("send", "olivia", `{"idempotencyKey":"fault-key-06","destination":["b","c"],"body":6}`), 503, "Service unavailable", "storage unavailable: disk on fire")
	st.appendsLeft.Store(-1)
	e.wantJSON(e.post("send", "olivia", `{"idempotencyKey":"fault-key-06","destination":["b","c"],"body":6}`), `{"sent":2}`)
	for _, who := range []string{"b", "c"} {
		e.wantJSON(e.post("receive", who, ""), `[{"type":"msg","idempotencyKey":"fault-key-06","origin":"olivia","body":6,"expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`)
	}
}

func grep(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestExpiryAndIdempotencyWindow runs the inbox and its engine on one
// manual clock: messages and acks expire, and an idempotency key is
// remembered for the expiration from its first send.
func TestExpiryAndIdempotencyWindow(t *testing.T) {
	clock := storetest.NewClock()
	e := serveOn(t, memstore.New(memstore.Options{Now: clock.Now, SweepInterval: -1}), func(o *inbox.Options) {
		o.Now = clock.Now
		o.Expiration = time.Hour
	})
	send := func(key, body string, ack bool) {
		t.Helper()
		e.wantJSON(e.post("send", "a", fmt.Sprintf(`{"idempotencyKey":%q,"destination":["b"],"body":%q,"expectsAck":%v}`, key, body, ack)), `{"sent":1}`)
	}
	wantB := func(entries ...string) {
		t.Helper()
		e.wantJSON(e.post("receive", "b", ""), "["+strings.Join(entries, ",")+"]")
	}
	msg := func(key, body string, ack bool) string {
		return fmt.Sprintf(`{"type":"msg","idempotencyKey":%q,"origin":"a","body":%q,"expectsAck":%v,"sentAt":%q}`,
			key, body, ack, clock.Now().UTC().Format("2006-01-02T15:04:05Z"))
	}

	// Unread past its expiration: gone.
	send("window-key-1", "v1", false)
	clock.Advance(time.Hour + time.Second)
	wantB()
	// The key's window ended with it: the same key is a new message.
	send("window-key-1", "v2", false)
	wantB(msg("window-key-1", "v2", false))
	// Read: resends are suppressed until an hour after that send.
	clock.Advance(30 * time.Minute)
	send("window-key-1", "v3", false)
	wantB()
	clock.Advance(31 * time.Minute)
	send("window-key-1", "v4", false)
	wantB(msg("window-key-1", "v4", false))

	// An unread resend replaces the copy and restarts its expiry.
	send("window-key-2", "old", false)
	clock.Advance(50 * time.Minute)
	send("window-key-2", "new", false)
	clock.Advance(30 * time.Minute) // past the first send's expiry, not the resend's
	e.wantJSON(e.post("receive", "b", ""), fmt.Sprintf(`[{"type":"msg","idempotencyKey":"window-key-2","origin":"a","body":"new","expectsAck":false,"sentAt":%q}]`,
		clock.Now().Add(-30*time.Minute).UTC().Format("2006-01-02T15:04:05Z")))

	// Acks expire too, and carry the time of the receive.
	send("window-key-3", "ack me", true)
	clock.Advance(5 * time.Second)
	received := clock.Now().UTC().Format("2006-01-02T15:04:05Z")
	e.post("receive", "b", "")
	r := e.post("receive", "a", "")
	e.wantJSON(r, fmt.Sprintf(`[{"type":"ack","idempotencyKey":"window-key-3","destination":"b","receivedAt":%q}]`, received))
	send("window-key-4", "ack me too", true)
	e.post("receive", "b", "")
	clock.Advance(time.Hour + time.Second)
	e.wantJSON(e.post("receive", "a", ""), `[]`)
}

// TestClosedEngine: a node whose engine has gone answers 503 in the JSON
// shape, never 500.
func TestClosedEngine(t *testing.T) {
	st := memstore.New(memstore.Options{})
	e := serveOn(t, st, nil)
	st.Close()
	for _, endpoint := range []string{"send", "receive", "exchange"} {
		r := e.post(endpoint, "a", `{"idempotencyKey":"closed-key-1","destination":["b"],"body":1}`)
		e.wantError(r, 503, "Service unavailable", "server is shutting down")
	}
}
