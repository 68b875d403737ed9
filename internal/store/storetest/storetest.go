// Package storetest is the contract suite that every storage engine must
// pass. An engine's own test calls Run with a Harness that builds a fresh,
// empty engine on a clock the suite controls.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
)

// Clock is a manual clock. Engines under test must take every expiry
// decision from it.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock standing at a fixed instant.
func NewClock() *Clock {
	return &Clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Harness builds engines for the suite.
type Harness struct {
	// New returns a new, empty engine that reads time from clock. The suite
	// closes it.
	New func(t *testing.T, clock *Clock) store.Engine
	// Reopen, for durable engines, closes e and opens the same data again
	// with the same clock. Nil for engines that keep nothing.
	Reopen func(t *testing.T, e store.Engine, clock *Clock) store.Engine
}

// Run runs the whole contract against h.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e store.Engine, c *Clock)
	}{
		{"AppendTakeFIFO", testAppendTakeFIFO},
		{"EmptyQueue", testEmptyQueue},
		{"KeysAreIndependent", testKeysIndependent},
		{"BodiesKeptExactly", testBodiesExact},
		{"Pending", testPending},
		{"PlainTakeSkipsPending", testTakeSkipsPending},
		{"AckAnyState", testAck},
		{"Status", testStatus},
		{"Limit", testLimit},
		{"MaxLenTrimsOldest", testMaxLen},
		{"Clear", testClear},
		{"Reply", testReply},
		{"ReplyExpires", testReplyExpires},
		{"MessageTTL", testMessageTTL},
		{"DedupReplacesQueued", testDedupReplace},
		{"DedupWindow", testDedupWindow},
		{"DedupKeepFirst", testDedupKeepFirst},
		{"DedupMax", testDedupMax},
		{"DedupMaxHolds", testDedupMaxHolds},
		{"TakeAll", testTakeAll},
		{"LeaseHidesUntilSettled", testLeaseHides},
		{"LeaseRunsOut", testLeaseRunsOut},
		{"PendingLease", testPendingLease},
		{"SettleAfterTakeAll", testSettleAfterTakeAll},
		{"IDsIncreaseAfterEmpty", testIDsIncrease},
		{"ConcurrentProduceConsume", testConcurrentExactlyOnce},
		{"ConcurrentPendingTakers", testConcurrentPending},
		{"ConcurrentReplies", testConcurrentReplies},
		{"CloseIsIdempotent", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := NewClock()
			e := h.New(t, c)
			defer e.Close()
			tc.fn(t, e, c)
		})
	}
	runHistory(t, h)
	if h.Reopen != nil {
		t.Run("SurvivesReopen", func(t *testing.T) {
			c := NewClock()
			e := h.New(t, c)
			e = testReopen(t, e, c, h.Reopen)
			e.Close()
		})
	}
}

var ctx = context.Background()

func msg(body string) store.Message {
	return store.Message{ContentType: "text/plain", Body: []byte(body)}
}

func mustAppend(t *testing.T, e store.Engine, key, body string, opts store.AppendOptions) store.AppendResult {
	t.Helper()
	r, err := e.Append(ctx, key, msg(body), opts)
	if err != nil {
		t.Fatalf("Append(%q, %q): %v", key, body, err)
	}
	return r
}

// leaseTime is the lease of every take of the suite.
const leaseTime = time.Minute

// take takes a message under a lease, and leaves the lease to the test.
func take(t *testing.T, e store.Engine, key string, mode store.TakeMode) (store.Lease, bool) {
	t.Helper()
	l, ok, err := e.Take(ctx, key, mode, leaseTime)
	if err != nil {
		t.Fatalf("Take(%q): %v", key, err)
	}
	if ok && (l.Mode != mode || l.Token != 0 && l.Deadline.IsZero()) {
		t.Fatalf("Take(%q) lease = mode %v deadline %v", key, l.Mode, l.Deadline)
	}
	return l, ok
}

// settle settles ls, delivered or not.
func settle(t *testing.T, e store.Engine, key string, delivered bool, ls ...store.Lease) {
	t.Helper()
	if err := e.Settle(ctx, key, ls, delivered); err != nil {
		t.Fatalf("Settle(%q, %v): %v", key, delivered, err)
	}
}

// mustTake takes a message and settles it as delivered: a consume that
// went well.
func mustTake(t *testing.T, e store.Engine, key string, mode store.TakeMode) (store.Message, bool) {
	t.Helper()
	l, ok := take(t, e, key, mode)
	if ok {
		settle(t, e, key, true, l)
	}
	return l.Message, ok
}

// takeAll takes up to max messages under one lease, and leaves the lease
// to the test.
func takeAll(t *testing.T, e store.Engine, key string, max int) []store.Lease {
	t.Helper()
	ls, err := e.TakeAll(ctx, key, max, leaseTime)
	if err != nil {
		t.Fatalf("TakeAll(%q, %d): %v", key, max, err)
	}
	return ls
}

// deliverAll takes up to max messages and settles them as delivered.
func deliverAll(t *testing.T, e store.Engine, key string, max int) []store.Lease {
	t.Helper()
	ls := takeAll(t, e, key, max)
	if len(ls) > 0 {
		settle(t, e, key, true, ls...)
	}
	return ls
}

func bodies(ls []store.Lease) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = string(l.Body)
	}
	return out
}

func wantBody(t *testing.T, e store.Engine, key string, mode store.TakeMode, want string) store.Message {
	t.Helper()
	m, ok := mustTake(t, e, key, mode)
	if !ok {
		t.Fatalf("Take(%q) found nothing, want %q", key, want)
	}
	if string(m.Body) != want {
		t.Fatalf("Take(%q) = %q, want %q", key, m.Body, want)
	}
	return m
}

func wantEmpty(t *testing.T, e store.Engine, key string, mode store.TakeMode) {
	t.Helper()
	if m, ok := mustTake(t, e, key, mode); ok {
		t.Fatalf("Take(%q) = %q (%v), want nothing", key, m.Body, m.ID)
	}
}

func wantLen(t *testing.T, e store.Engine, key string, want int) {
	t.Helper()
	n, err := e.Len(ctx, key)
	if err != nil || n != want {
		t.Fatalf("Len(%q) = %d, %v; want %d", key, n, err, want)
	}
}

func wantStatus(t *testing.T, e store.Engine, key string, id store.ID, want store.State) {
	t.Helper()
	s, err := e.Status(ctx, key, id)
	if err != nil || s != want {
		t.Fatalf("Status(%q, %v) = %v, %v; want %v", key, id, s, err, want)
	}
}

func testAppendTakeFIFO(t *testing.T, e store.Engine, _ *Clock) {
	var last store.ID
	for i := range 5 {
		r := mustAppend(t, e, "q", fmt.Sprint(i), store.AppendOptions{})
		if r.ID.Compare(last) <= 0 {
			t.Fatalf("id %v not after %v", r.ID, last)
		}
		if r.Len != i+1 {
			t.Fatalf("Len after append %d = %d", i, r.Len)
		}
		last = r.ID
	}
	wantLen(t, e, "q", 5)
	for i := range 5 {
		wantBody(t, e, "q", store.TakeDelete, fmt.Sprint(i))
	}
	wantEmpty(t, e, "q", store.TakeDelete)
	wantLen(t, e, "q", 0)
}

func testEmptyQueue(t *testing.T, e store.Engine, _ *Clock) {
	wantEmpty(t, e, "nothing", store.TakeDelete)
	wantEmpty(t, e, "nothing", store.TakePending)
	wantLen(t, e, "nothing", 0)
	wantStatus(t, e, "nothing", store.ID{MS: 1, Seq: 1}, store.StateNone)
	if ok, err := e.Ack(ctx, "nothing", store.ID{MS: 1}); ok || err != nil {
		t.Fatalf("Ack on empty = %v, %v", ok, err)
	}
	if n, err := e.Clear(ctx, "nothing"); n != 0 || err != nil {
		t.Fatalf("Clear on empty = %d, %v", n, err)
	}
	if ms, err := e.TakeAll(ctx, "nothing", 0, leaseTime); len(ms) != 0 || err != nil {
		t.Fatalf("TakeAll on empty = %v, %v", ms, err)
	}
	if err := e.Settle(ctx, "nothing", []store.Lease{{Message: store.Message{ID: store.ID{MS: 1}}, Token: 7}}, true); err != nil {
		t.Fatalf("Settle on empty: %v", err)
	}
	if _, ok, err := e.TakeReply(ctx, "nothing", store.ID{MS: 1}); ok || err != nil {
		t.Fatalf("TakeReply on empty = %v, %v", ok, err)
	}
}

func testKeysIndependent(t *testing.T, e store.Engine, _ *Clock) {
	mustAppend(t, e, "a", "for a", store.AppendOptions{})
	mustAppend(t, e, "b", "for b", store.AppendOptions{})
	mustAppend(t, e, "a/b", "for a/b", store.AppendOptions{})
	wantBody(t, e, "b", store.TakeDelete, "for b")
	wantEmpty(t, e, "b", store.TakeDelete)
	wantLen(t, e, "a", 1)
	wantBody(t, e, "a/b", store.TakeDelete, "for a/b")
	wantBody(t, e, "a", store.TakeDelete, "for a")
}

func testBodiesExact(t *testing.T, e store.Engine, _ *Clock) {
	bodies := []store.Message{
		{ContentType: "application/json", Body: []byte(`{"x":1}`)},
		{ContentType: "", Body: nil},
		{ContentType: "application/octet-stream", Body: []byte{0, 1, 2, 0xff, 0xfe, '\n', 0}},
		{ContentType: "text/plain; charset=utf-8", Body: bytes.Repeat([]byte("é"), 70000)},
	}
	for _, m := range bodies {
		if _, err := e.Append(ctx, "q", m, store.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range bodies {
		got, ok := mustTake(t, e, "q", store.TakeDelete)
		if !ok || got.ContentType != want.ContentType || !bytes.Equal(got.Body, want.Body) {
			t.Fatalf("message %d: got %q %d bytes, want %q %d bytes", i, got.ContentType, len(got.Body), want.ContentType, len(want.Body))
		}
	}
}

func testPending(t *testing.T, e store.Engine, _ *Clock) {
	r1 := mustAppend(t, e, "q", "one", store.AppendOptions{})
	r2 := mustAppend(t, e, "q", "two", store.AppendOptions{})
	m := wantBody(t, e, "q", store.TakePending, "one")
	if m.ID != r1.ID {
		t.Fatalf("pending id %v, want %v", m.ID, r1.ID)
	}
	// The pending message keeps coming back until acknowledged.
	m = wantBody(t, e, "q", store.TakePending, "one")
	if m.ID != r1.ID {
		t.Fatalf("pending again id %v, want %v", m.ID, r1.ID)
	}
	wantLen(t, e, "q", 2)
	if ok, err := e.Ack(ctx, "q", r1.ID); !ok || err != nil {
		t.Fatalf("Ack pending = %v, %v", ok, err)
	}
	wantLen(t, e, "q", 1)
	m = wantBody(t, e, "q", store.TakePending, "two")
	if m.ID != r2.ID {
		t.Fatalf("second pending id %v, want %v", m.ID, r2.ID)
	}
	if ok, _ := e.Ack(ctx, "q", r2.ID); !ok {
		t.Fatal("Ack second = false")
	}
	wantEmpty(t, e, "q", store.TakePending)
	wantLen(t, e, "q", 0)
}

func testTakeSkipsPending(t *testing.T, e store.Engine, _ *Clock) {
	r1 := mustAppend(t, e, "q", "one", store.AppendOptions{})
	mustAppend(t, e, "q", "two", store.AppendOptions{})
	wantBody(t, e, "q", store.TakePending, "one")
	wantBody(t, e, "q", store.TakeDelete, "two")
	wantEmpty(t, e, "q", store.TakeDelete)
	wantLen(t, e, "q", 1)
	wantStatus(t, e, "q", r1.ID, store.StatePending)
	wantBody(t, e, "q", store.TakePending, "one")
}

func testAck(t *testing.T, e store.Engine, _ *Clock) {
	r1 := mustAppend(t, e, "q", "unseen", store.AppendOptions{})
	r2 := mustAppend(t, e, "q", "next", store.AppendOptions{})
	// Acknowledging deletes even a message nobody has read.
	if ok, err := e.Ack(ctx, "q", r1.ID); !ok || err != nil {
		t.Fatalf("Ack unseen = %v, %v", ok, err)
	}
	if ok, _ := e.Ack(ctx, "q", r1.ID); ok {
		t.Fatal("second Ack reported a removal")
	}
	if ok, _ := e.Ack(ctx, "q", store.ID{MS: 1, Seq: 99}); ok {
		t.Fatal("Ack of unknown id reported a removal")
	}
	wantLen(t, e, "q", 1)
	m := wantBody(t, e, "q", store.TakeDelete, "next")
	if m.ID != r2.ID {
		t.Fatalf("id %v, want %v", m.ID, r2.ID)
	}
}

func testStatus(t *testing.T, e store.Engine, _ *Clock) {
	r := mustAppend(t, e, "q", "x", store.AppendOptions{})
	wantStatus(t, e, "q", r.ID, store.StateQueued)
	wantBody(t, e, "q", store.TakePending, "x")
	wantStatus(t, e, "q", r.ID, store.StatePending)
	e.Ack(ctx, "q", r.ID)
	wantStatus(t, e, "q", r.ID, store.StateNone)
	r = mustAppend(t, e, "q", "y", store.AppendOptions{})
	wantBody(t, e, "q", store.TakeDelete, "y")
	wantStatus(t, e, "q", r.ID, store.StateNone)
	wantStatus(t, e, "other", r.ID, store.StateNone)
}

func testLimit(t *testing.T, e store.Engine, _ *Clock) {
	for i := range 3 {
		r := mustAppend(t, e, "q", fmt.Sprint(i), store.AppendOptions{Limit: 3})
		if r.Len != i+1 {
			t.Fatalf("Len %d, want %d", r.Len, i+1)
		}
	}
	_, err := e.Append(ctx, "q", msg("refused"), store.AppendOptions{Limit: 3})
	var full *store.FullError
	if !errors.As(err, &full) || full.Len != 3 {
		t.Fatalf("Append over limit: %v, want FullError{3}", err)
	}
	// Pending messages count towards the limit.
	wantBody(t, e, "q", store.TakePending, "0")
	if _, err := e.Append(ctx, "q", msg("refused"), store.AppendOptions{Limit: 3}); !errors.As(err, &full) {
		t.Fatalf("Append over limit with pending: %v", err)
	}
	wantBody(t, e, "q", store.TakeDelete, "1")
	mustAppend(t, e, "q", "3", store.AppendOptions{Limit: 3})
	// A larger limit, or none, lets it through.
	mustAppend(t, e, "q", "4", store.AppendOptions{Limit: 4})
	mustAppend(t, e, "q", "5", store.AppendOptions{})
	wantLen(t, e, "q", 5)
}

func testMaxLen(t *testing.T, e store.Engine, _ *Clock) {
	for i := range 3 {
		r := mustAppend(t, e, "q", fmt.Sprint(i), store.AppendOptions{MaxLen: 3})
		if r.Trimmed != 0 {
			t.Fatalf("trimmed %d below the cap", r.Trimmed)
		}
	}
	r := mustAppend(t, e, "q", "3", store.AppendOptions{MaxLen: 3})
	if r.Trimmed != 1 || r.Len != 3 {
		t.Fatalf("at cap: trimmed %d len %d, want 1 and 3", r.Trimmed, r.Len)
	}
	r = mustAppend(t, e, "q", "4", store.AppendOptions{MaxLen: 1})
	if r.Trimmed != 3 || r.Len != 1 {
		t.Fatalf("cap 1: trimmed %d len %d, want 3 and 1", r.Trimmed, r.Len)
	}
	wantBody(t, e, "q", store.TakeDelete, "4")
	wantEmpty(t, e, "q", store.TakeDelete)
}

func testClear(t *testing.T, e store.Engine, _ *Clock) {
	r1 := mustAppend(t, e, "q", "a", store.AppendOptions{})
	mustAppend(t, e, "q", "b", store.AppendOptions{})
	mustAppend(t, e, "q", "c", store.AppendOptions{})
	wantBody(t, e, "q", store.TakePending, "a")
	if ok, err := e.Reply(ctx, "q", r1.ID, msg("reply"), time.Hour); !ok || err != nil {
		t.Fatalf("Reply = %v, %v", ok, err)
	}
	wantBody(t, e, "q", store.TakePending, "b")
	n, err := e.Clear(ctx, "q")
	if err != nil || n != 2 {
		t.Fatalf("Clear = %d, %v; want 2", n, err)
	}
	wantLen(t, e, "q", 0)
	wantEmpty(t, e, "q", store.TakePending)
	// Replies survive Clear.
	m, ok, err := e.TakeReply(ctx, "q", r1.ID)
	if !ok || err != nil || string(m.Body) != "reply" {
		t.Fatalf("TakeReply after Clear = %q %v %v", m.Body, ok, err)
	}
	// The queue works after Clear, with ids still increasing.
	r := mustAppend(t, e, "q", "d", store.AppendOptions{})
	if r.ID.Compare(r1.ID) <= 0 {
		t.Fatalf("id after Clear %v not after %v", r.ID, r1.ID)
	}
	wantBody(t, e, "q", store.TakeDelete, "d")
}

func testReply(t *testing.T, e store.Engine, _ *Clock) {
	r1 := mustAppend(t, e, "q", "question", store.AppendOptions{})
	r2 := mustAppend(t, e, "q", "second", store.AppendOptions{})
	// Not pending yet: no reply.
	if ok, err := e.Reply(ctx, "q", r1.ID, msg("early"), time.Hour); ok || err != nil {
		t.Fatalf("Reply to unseen = %v, %v", ok, err)
	}
	wantStatus(t, e, "q", r1.ID, store.StateQueued)
	wantBody(t, e, "q", store.TakePending, "question")
	answer := store.Message{ContentType: "application/json", Body: []byte(`{"ok":true}`)}
	if ok, err := e.Reply(ctx, "q", r1.ID, answer, time.Hour); !ok || err != nil {
		t.Fatalf("Reply to pending = %v, %v", ok, err)
	}
	// The reply acknowledged the message.
	wantStatus(t, e, "q", r1.ID, store.StateNone)
	wantLen(t, e, "q", 1)
	if ok, _ := e.Reply(ctx, "q", r1.ID, msg("again"), time.Hour); ok {
		t.Fatal("second Reply was stored")
	}
	got, ok, err := e.TakeReply(ctx, "q", r1.ID)
	if !ok || err != nil || got.ContentType != "application/json" || string(got.Body) != `{"ok":true}` {
		t.Fatalf("TakeReply = %q %q %v %v", got.ContentType, got.Body, ok, err)
	}
	// Read once.
	if _, ok, _ := e.TakeReply(ctx, "q", r1.ID); ok {
		t.Fatal("reply read twice")
	}
	if _, ok, _ := e.TakeReply(ctx, "q", r2.ID); ok {
		t.Fatal("reply for a message nobody replied to")
	}
	if _, ok, _ := e.TakeReply(ctx, "other", r1.ID); ok {
		t.Fatal("reply found under another key")
	}
}

func testReplyExpires(t *testing.T, e store.Engine, c *Clock) {
	r := mustAppend(t, e, "q", "x", store.AppendOptions{})
	wantBody(t, e, "q", store.TakePending, "x")
	if ok, _ := e.Reply(ctx, "q", r.ID, msg("late"), time.Minute); !ok {
		t.Fatal("Reply not stored")
	}
	c.Advance(time.Minute + time.Millisecond)
	if m, ok, err := e.TakeReply(ctx, "q", r.ID); ok || err != nil {
		t.Fatalf("expired reply returned: %q %v", m.Body, err)
	}
}

func testMessageTTL(t *testing.T, e store.Engine, c *Clock) {
	short := mustAppend(t, e, "q", "short", store.AppendOptions{TTL: time.Second})
	mustAppend(t, e, "q", "long", store.AppendOptions{TTL: time.Hour})
	mustAppend(t, e, "q", "forever", store.AppendOptions{})
	c.Advance(2 * time.Second)
	wantStatus(t, e, "q", short.ID, store.StateNone)
	wantBody(t, e, "q", store.TakeDelete, "long")
	c.Advance(2 * time.Hour)
	wantBody(t, e, "q", store.TakePending, "forever")
	wantEmpty(t, e, "q", store.TakeDelete)

	mustAppend(t, e, "all", "a", store.AppendOptions{TTL: time.Second})
	appended := c.Now()
	mustAppend(t, e, "all", "b", store.AppendOptions{TTL: time.Hour})
	c.Advance(2 * time.Second)
	ms := deliverAll(t, e, "all", 0)
	if len(ms) != 1 || string(ms[0].Body) != "b" {
		t.Fatalf("TakeAll after expiry = %v", bodies(ms))
	}
	// ExpiresAt is the append time plus TTL, to the millisecond at least.
	if d := ms[0].ExpiresAt.Sub(appended.Add(time.Hour)); d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("ExpiresAt = %v, want %v", ms[0].ExpiresAt, appended.Add(time.Hour))
	}
}

func testDedupReplace(t *testing.T, e store.Engine, _ *Clock) {
	opts := store.AppendOptions{DedupKey: "k1", DedupWindow: time.Hour}
	first := mustAppend(t, e, "q", "v1", opts)
	mustAppend(t, e, "q", "other", store.AppendOptions{})
	again := mustAppend(t, e, "q", "v2", opts)
	if !again.Duplicate || again.ID != first.ID || again.Len != 2 {
		t.Fatalf("duplicate append = %+v, want Duplicate with id %v and len 2", again, first.ID)
	}
	m := wantBody(t, e, "q", store.TakeDelete, "v2")
	if m.ID != first.ID || m.DedupKey != "k1" {
		t.Fatalf("replaced message id %v key %q", m.ID, m.DedupKey)
	}
	wantBody(t, e, "q", store.TakeDelete, "other")
	// Another key, or the same key in another queue, is not a duplicate.
	if r := mustAppend(t, e, "q", "k2", store.AppendOptions{DedupKey: "k2"}); r.Duplicate {
		t.Fatal("other key counted as duplicate")
	}
	if r := mustAppend(t, e, "q2", "k1", opts); r.Duplicate {
		t.Fatal("same key in another queue counted as duplicate")
	}
}

func testDedupWindow(t *testing.T, e store.Engine, c *Clock) {
	opts := store.AppendOptions{DedupKey: "key", DedupWindow: time.Hour}
	mustAppend(t, e, "q", "v1", opts)
	wantBody(t, e, "q", store.TakeDelete, "v1")
	// Delivered within the window: suppressed.
	if r := mustAppend(t, e, "q", "v2", opts); !r.Duplicate {
		t.Fatalf("resend within window stored: %+v", r)
	}
	wantEmpty(t, e, "q", store.TakeDelete)
	// After the window: a new message.
	c.Advance(time.Hour + time.Second)
	if r := mustAppend(t, e, "q", "v3", opts); r.Duplicate {
		t.Fatal("resend after window suppressed")
	}
	wantBody(t, e, "q", store.TakeDelete, "v3")

	// A pending message counts as handed out.
	mustAppend(t, e, "p", "v1", opts)
	wantBody(t, e, "p", store.TakePending, "v1")
	if r := mustAppend(t, e, "p", "v2", opts); !r.Duplicate {
		t.Fatal("resend of pending message stored")
	}
	// Without a window the key counts only while queued.
	zero := store.AppendOptions{DedupKey: "z"}
	mustAppend(t, e, "z", "v1", zero)
	wantBody(t, e, "z", store.TakeDelete, "v1")
	if r := mustAppend(t, e, "z", "v2", zero); r.Duplicate {
		t.Fatal("zero window suppressed a resend")
	}
	// TakeAll counts as delivery too, and a resend is told the id.
	first := mustAppend(t, e, "all", "v1", opts)
	if ms := deliverAll(t, e, "all", 0); len(ms) != 1 {
		t.Fatalf("TakeAll = %d messages", len(ms))
	}
	if r := mustAppend(t, e, "all", "v2", opts); !r.Duplicate || r.ID != first.ID {
		t.Fatalf("resend after TakeAll = %+v, want a duplicate of %v", r, first.ID)
	}
}

// testDedupKeepFirst is idempotent produce: the first content wins, and a
// repeat is told the first's id while the message is queued, taken, or
// delivered within the window.
func testDedupKeepFirst(t *testing.T, e store.Engine, _ *Clock) {
	opts := store.AppendOptions{DedupKey: "k", DedupWindow: time.Hour, KeepFirst: true}
	first := mustAppend(t, e, "q", "v1", opts)
	for _, body := range []string{"v1", "v2"} {
		if r := mustAppend(t, e, "q", body, opts); !r.Duplicate || r.ID != first.ID || r.Len != 1 {
			t.Fatalf("repeat while queued = %+v, want a duplicate of %v", r, first.ID)
		}
	}
	l, _ := take(t, e, "q", store.TakeDelete)
	if r := mustAppend(t, e, "q", "v3", opts); !r.Duplicate || r.ID != first.ID {
		t.Fatalf("repeat while taken = %+v", r)
	}
	if string(l.Body) != "v1" {
		t.Fatalf("took %q, want the first content", l.Body)
	}
	settle(t, e, "q", true, l)
	if r := mustAppend(t, e, "q", "v4", opts); !r.Duplicate || r.ID != first.ID {
		t.Fatalf("repeat after delivery = %+v", r)
	}
	wantEmpty(t, e, "q", store.TakeDelete)
}

// testDedupMaxHolds: the bound holds as keys of delivered messages keep
// coming (idempotent produce: every append names it), the oldest
// forgotten first, the newest told their ids.
func testDedupMaxHolds(t *testing.T, e store.Engine, c *Clock) {
	opts := func(k string) store.AppendOptions {
		return store.AppendOptions{DedupKey: k, DedupWindow: time.Hour, KeepFirst: true, DedupMax: 3}
	}
	ids := map[string]store.ID{}
	for _, k := range []string{"k0", "k1", "k2", "k3", "k4"} {
		ids[k] = mustAppend(t, e, "q", k, opts(k)).ID
		wantBody(t, e, "q", store.TakeDelete, k)
		c.Advance(time.Second)
	}
	for _, k := range []string{"k3", "k4"} {
		if r := mustAppend(t, e, "q", "again", opts(k)); !r.Duplicate || r.ID != ids[k] {
			t.Fatalf("%s: %+v, want a duplicate of %v", k, r, ids[k])
		}
	}
	for _, k := range []string{"k0", "k1"} {
		if r := mustAppend(t, e, "q", k+" anew", opts(k)); r.Duplicate {
			t.Fatalf("%s still remembered beyond the bound", k)
		}
	}
	wantBody(t, e, "q", store.TakeDelete, "k0 anew")
	wantBody(t, e, "q", store.TakeDelete, "k1 anew")
}

// testDedupMax: an append with DedupMax leaves at most that many
// remembered keys of handed-out messages, forgetting those whose windows
// end first; the ones kept still suppress resends.
func testDedupMax(t *testing.T, e store.Engine, c *Clock) {
	const n, max = 40, 16
	for i := range n {
		mustAppend(t, e, "q", "v", store.AppendOptions{DedupKey: fmt.Sprint("k", i), DedupWindow: time.Hour})
		wantBody(t, e, "q", store.TakeDelete, "v")
		c.Advance(time.Second) // windows end in the order of the keys
	}
	mustAppend(t, e, "q", "new", store.AppendOptions{DedupKey: "new", DedupWindow: time.Hour, DedupMax: max})
	// Checked from the newest: a key still remembered answers Duplicate
	// and changes nothing; the first forgotten one ends the run of
	// remembered keys (a check that stores it is made without DedupMax).
	kept := 0
	for i := n - 1; i >= 0; i-- {
		r := mustAppend(t, e, "q", "again", store.AppendOptions{DedupKey: fmt.Sprint("k", i), DedupWindow: time.Hour})
		if !r.Duplicate {
			break
		}
		kept++
	}
	if kept > max || kept < max*7/8 {
		t.Fatalf("%d of the newest keys remembered after DedupMax %d, want at most %d and at least %d", kept, max, max, max*7/8)
	}
	// The oldest is forgotten.
	if r := mustAppend(t, e, "q", "again", store.AppendOptions{DedupKey: "k0", DedupWindow: time.Hour}); r.Duplicate {
		t.Fatal("the oldest key is still remembered")
	}
	// Without DedupMax nothing is bounded but the window.
	for i := range n {
		mustAppend(t, e, "u", "v", store.AppendOptions{DedupKey: fmt.Sprint("k", i), DedupWindow: time.Hour})
		wantBody(t, e, "u", store.TakeDelete, "v")
	}
	mustAppend(t, e, "u", "new", store.AppendOptions{DedupKey: "new", DedupWindow: time.Hour})
	if r := mustAppend(t, e, "u", "again", store.AppendOptions{DedupKey: "k0", DedupWindow: time.Hour}); !r.Duplicate {
		t.Fatal("without DedupMax a key was forgotten within its window")
	}
}

func testTakeAll(t *testing.T, e store.Engine, _ *Clock) {
	for i := range 5 {
		mustAppend(t, e, "q", fmt.Sprint(i), store.AppendOptions{})
	}
	wantBody(t, e, "q", store.TakePending, "0")
	ms := deliverAll(t, e, "q", 2)
	if got := bodies(ms); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Fatalf("TakeAll(2) = %v", got)
	}
	ms = deliverAll(t, e, "q", 0)
	if got := bodies(ms); len(got) != 2 || got[0] != "3" || got[1] != "4" {
		t.Fatalf("TakeAll(0) = %v", got)
	}
	wantLen(t, e, "q", 1) // the pending one stays
}

// testLeaseHides: a message under a lease is handed to nobody else and
// still counts as queued; settled as not delivered, it is back at the
// head; settled as delivered, it is gone.
func testLeaseHides(t *testing.T, e store.Engine, _ *Clock) {
	a := mustAppend(t, e, "q", "a", store.AppendOptions{})
	mustAppend(t, e, "q", "b", store.AppendOptions{})
	mustAppend(t, e, "q", "c", store.AppendOptions{})
	la, _ := take(t, e, "q", store.TakeDelete)
	if string(la.Body) != "a" || la.ID != a.ID || la.Token == 0 {
		t.Fatalf("took %q %v token %d", la.Body, la.ID, la.Token)
	}
	wantLen(t, e, "q", 3)
	wantStatus(t, e, "q", a.ID, store.StateQueued)
	lb, _ := take(t, e, "q", store.TakeDelete)
	if string(lb.Body) != "b" {
		t.Fatalf("second take %q, want b", lb.Body)
	}
	settle(t, e, "q", false, la)
	settle(t, e, "q", false, la) // twice: a no-op
	la2, _ := take(t, e, "q", store.TakeDelete)
	if string(la2.Body) != "a" || la2.ID != a.ID {
		t.Fatalf("after a failed delivery took %q, want a again", la2.Body)
	}
	settle(t, e, "q", true, lb)
	wantLen(t, e, "q", 2)
	settle(t, e, "q", true, la2)
	settle(t, e, "q", true, la2) // twice: a no-op
	wantStatus(t, e, "q", a.ID, store.StateNone)
	wantBody(t, e, "q", store.TakeDelete, "c")
	wantEmpty(t, e, "q", store.TakeDelete)
	wantLen(t, e, "q", 0)
}

// testLeaseRunsOut: a lease not settled in time hands its message out
// again, at its place; the late settle of the old lease does not touch
// the new one, and a delivered settle of a lease that ran out, the
// message taken by nobody since, still removes it.
func testLeaseRunsOut(t *testing.T, e store.Engine, c *Clock) {
	mustAppend(t, e, "q", "a", store.AppendOptions{})
	mustAppend(t, e, "q", "b", store.AppendOptions{})
	la, _ := take(t, e, "q", store.TakeDelete)
	c.Advance(leaseTime + time.Second)
	lb, _ := take(t, e, "q", store.TakeDelete)
	if lb.ID != la.ID || lb.Token == la.Token {
		t.Fatalf("after the lease ran out took %q (token %d), want a under a new lease", lb.Body, lb.Token)
	}
	settle(t, e, "q", true, la)
	settle(t, e, "q", false, la)
	wantLen(t, e, "q", 2)
	if l, _ := take(t, e, "q", store.TakeDelete); string(l.Body) != "b" {
		t.Fatalf("took %q while a is under its new lease, want b", l.Body)
	} else {
		c.Advance(leaseTime + time.Second)
		settle(t, e, "q", true, l) // ran out, taken by nobody since
	}
	settle(t, e, "q", true, lb)
	wantLen(t, e, "q", 0)
	wantEmpty(t, e, "q", store.TakeDelete)
}

// testPendingLease: a pending take is pending at once for Status, Reply
// and other pending takers; not delivered, it is queued again.
func testPendingLease(t *testing.T, e store.Engine, c *Clock) {
	x := mustAppend(t, e, "q", "x", store.AppendOptions{})
	y := mustAppend(t, e, "q", "y", store.AppendOptions{})
	l, _ := take(t, e, "q", store.TakePending)
	if l.ID != x.ID || l.Token == 0 {
		t.Fatalf("pending take %q token %d", l.Body, l.Token)
	}
	wantStatus(t, e, "q", x.ID, store.StatePending)
	if again, _ := take(t, e, "q", store.TakePending); again.ID != x.ID || again.Token != 0 {
		t.Fatalf("second pending take %q token %d, want x with nothing to settle", again.Body, again.Token)
	}
	if d, _ := take(t, e, "q", store.TakeDelete); d.ID != y.ID {
		t.Fatalf("plain take %q, want y", d.Body)
	} else {
		settle(t, e, "q", false, d)
	}
	settle(t, e, "q", false, l)
	wantStatus(t, e, "q", x.ID, store.StateQueued)
	if ok, _ := e.Reply(ctx, "q", x.ID, msg("r"), time.Hour); ok {
		t.Fatal("reply to a message queued again was stored")
	}
	l, _ = take(t, e, "q", store.TakePending)
	settle(t, e, "q", true, l)
	wantStatus(t, e, "q", x.ID, store.StatePending)
	c.Advance(2 * leaseTime) // delivered: pending for good
	wantStatus(t, e, "q", x.ID, store.StatePending)
	if ok, _ := e.Reply(ctx, "q", x.ID, msg("r"), time.Hour); !ok {
		t.Fatal("reply to a pending message not stored")
	}
	// A reply may come before its take is settled.
	l, _ = take(t, e, "q", store.TakePending)
	if ok, _ := e.Reply(ctx, "q", y.ID, msg("r"), time.Hour); !ok || l.ID != y.ID {
		t.Fatalf("reply to %q taken and not settled: %v", l.Body, ok)
	}
	settle(t, e, "q", true, l)
	wantStatus(t, e, "q", y.ID, store.StateNone)
	// A pending lease that runs out is queued again.
	z := mustAppend(t, e, "q", "z", store.AppendOptions{})
	take(t, e, "q", store.TakePending)
	c.Advance(leaseTime + time.Second)
	wantStatus(t, e, "q", z.ID, store.StateQueued)
	if d, _ := take(t, e, "q", store.TakeDelete); d.ID != z.ID {
		t.Fatalf("plain take after the pending lease ran out: %q", d.Body)
	}
}

// testSettleAfterTakeAll is the inbox's undo of a receive whose acks or
// answer failed: what TakeAll handed out is back exactly as it was.
func testSettleAfterTakeAll(t *testing.T, e store.Engine, c *Clock) {
	keyed := store.AppendOptions{DedupKey: "kb", DedupWindow: time.Hour, TTL: time.Hour}
	mustAppend(t, e, "q", "a", store.AppendOptions{})
	b := mustAppend(t, e, "q", "b", keyed)
	ms := takeAll(t, e, "q", 0)
	if len(ms) != 2 {
		t.Fatalf("TakeAll = %v", bodies(ms))
	}
	mustAppend(t, e, "q", "c", store.AppendOptions{}) // arrives meanwhile
	if again := takeAll(t, e, "q", 0); len(again) != 1 || string(again[0].Body) != "c" {
		t.Fatalf("TakeAll beside a lease = %v, want [c]", bodies(again))
	} else {
		settle(t, e, "q", false, again...)
	}
	settle(t, e, "q", false, ms...)
	wantLen(t, e, "q", 3)
	again := takeAll(t, e, "q", 0)
	if got := bodies(again); len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c" {
		t.Fatalf("TakeAll after a failed delivery = %v, want [a b c]", got)
	}
	got := again[1]
	if got.ID != b.ID || got.ContentType != "text/plain" || got.DedupKey != "kb" {
		t.Fatalf("entry = %v %q %q, want %v text/plain kb", got.ID, got.ContentType, got.DedupKey, b.ID)
	}
	if d := got.ExpiresAt.Sub(c.Now().Add(time.Hour)); d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("ExpiresAt = %v, want %v", got.ExpiresAt, c.Now().Add(time.Hour))
	}
	settle(t, e, "q", true, again...)
	// Delivered: its key is remembered, with its id.
	if r := mustAppend(t, e, "q", "b2", keyed); !r.Duplicate || r.ID != b.ID {
		t.Fatalf("resend after delivery = %+v", r)
	}
	// Under a lease, its key does not replace it; queued again, it does.
	x := mustAppend(t, e, "r", "x", keyed)
	ms = takeAll(t, e, "r", 0)
	if r := mustAppend(t, e, "r", "x2", keyed); !r.Duplicate || r.ID != x.ID {
		t.Fatalf("dedup under a lease = %+v", r)
	}
	settle(t, e, "r", false, ms...)
	if r := mustAppend(t, e, "r", "x3", keyed); !r.Duplicate || r.ID != x.ID {
		t.Fatalf("dedup after the lease = %+v", r)
	}
	wantBody(t, e, "r", store.TakeDelete, "x3")
	wantEmpty(t, e, "r", store.TakeDelete)
}

func testIDsIncrease(t *testing.T, e store.Engine, _ *Clock) {
	var last store.ID
	for i := range 50 {
		r := mustAppend(t, e, "q", "x", store.AppendOptions{})
		if r.ID.Compare(last) <= 0 {
			t.Fatalf("append %d: id %v not after %v", i, r.ID, last)
		}
		last = r.ID
		// Emptying the queue must not reset ids.
		wantBody(t, e, "q", store.TakeDelete, "x")
	}
}

// testConcurrentExactlyOnce runs producers and consumers on one queue at once:
// every message is taken exactly once.
func testConcurrentExactlyOnce(t *testing.T, e store.Engine, _ *Clock) {
	const producers, consumers, each = 8, 8, 200
	total := producers * each
	var wg sync.WaitGroup
	errs := make(chan error, producers+consumers)
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				if _, err := e.Append(ctx, "q", msg(fmt.Sprintf("%d/%d", p, i)), store.AppendOptions{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	got := make(chan store.Message, total)
	var taken sync.WaitGroup
	taken.Add(total)
	done := make(chan struct{})
	go func() { taken.Wait(); close(done) }()
	for range consumers {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				l, ok, err := e.Take(ctx, "q", store.TakeDelete, leaseTime)
				if err == nil && ok {
					err = e.Settle(ctx, "q", []store.Lease{l}, true)
				}
				if err != nil {
					errs <- err
					return
				}
				if ok {
					got <- l.Message
					taken.Done()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	close(got)
	seen := map[string]bool{}
	for m := range got {
		if seen[string(m.Body)] {
			t.Fatalf("%q taken twice", m.Body)
		}
		seen[string(m.Body)] = true
	}
	if len(seen) != total {
		t.Fatalf("took %d distinct messages, want %d", len(seen), total)
	}
	wantLen(t, e, "q", 0)
}

// testConcurrentPending: concurrent pending takers all see the one pending
// message; nobody gets another until it is acknowledged.
func testConcurrentPending(t *testing.T, e store.Engine, _ *Clock) {
	first := mustAppend(t, e, "q", "first", store.AppendOptions{})
	mustAppend(t, e, "q", "second", store.AppendOptions{})
	var wg sync.WaitGroup
	ids := make(chan store.ID, 16)
	for range 16 {
		wg.Go(func() {
			l, ok, err := e.Take(ctx, "q", store.TakePending, leaseTime)
			if err == nil && ok {
				err = e.Settle(ctx, "q", []store.Lease{l}, true)
			}
			if err != nil || !ok {
				t.Errorf("Take pending: %v %v", ok, err)
				return
			}
			ids <- l.ID
		})
	}
	wg.Wait()
	close(ids)
	for id := range ids {
		if id != first.ID {
			t.Fatalf("concurrent pending take got %v, want %v", id, first.ID)
		}
	}
}

func testConcurrentReplies(t *testing.T, e store.Engine, _ *Clock) {
	r := mustAppend(t, e, "q", "x", store.AppendOptions{})
	wantBody(t, e, "q", store.TakePending, "x")
	var wg sync.WaitGroup
	won := make(chan string, 16)
	for i := range 16 {
		wg.Go(func() {
			ok, err := e.Reply(ctx, "q", r.ID, msg(fmt.Sprint(i)), time.Hour)
			if err != nil {
				t.Errorf("Reply: %v", err)
			}
			if ok {
				won <- fmt.Sprint(i)
			}
		})
	}
	wg.Wait()
	close(won)
	var winners []string
	for w := range won {
		winners = append(winners, w)
	}
	if len(winners) != 1 {
		t.Fatalf("%d replies stored, want exactly 1", len(winners))
	}
	m, ok, _ := e.TakeReply(ctx, "q", r.ID)
	if !ok || string(m.Body) != winners[0] {
		t.Fatalf("stored reply %q, winner %q", m.Body, winners[0])
	}
}

func testClose(t *testing.T, e store.Engine, _ *Clock) {
	mustAppend(t, e, "q", "x", store.AppendOptions{})
	if err := e.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := e.Append(ctx, "q", msg("y"), store.AppendOptions{}); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if _, _, err := e.Take(ctx, "q", store.TakeDelete, leaseTime); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Take after Close: %v, want ErrClosed", err)
	}
}

// testReopen checks that every acknowledged write of a durable engine is
// there after a reopen: queue order, pending state, replies, dedup keys,
// expiry and id order.
func testReopen(t *testing.T, e store.Engine, c *Clock, reopen func(*testing.T, store.Engine, *Clock) store.Engine) store.Engine {
	a := mustAppend(t, e, "q", "a", store.AppendOptions{})
	mustAppend(t, e, "q", "b", store.AppendOptions{DedupKey: "kb", DedupWindow: time.Hour})
	mustAppend(t, e, "q", "c", store.AppendOptions{})
	mustAppend(t, e, "ttl", "gone", store.AppendOptions{TTL: time.Minute})
	mustAppend(t, e, "ttl", "kept", store.AppendOptions{TTL: time.Hour})
	r := mustAppend(t, e, "r", "question", store.AppendOptions{})
	wantBody(t, e, "r", store.TakePending, "question")
	if ok, _ := e.Reply(ctx, "r", r.ID, msg("answer"), time.Hour); !ok {
		t.Fatal("Reply not stored")
	}
	wantBody(t, e, "q", store.TakePending, "a")
	once := mustAppend(t, e, "d", "once", store.AppendOptions{DedupKey: "kd", DedupWindow: time.Hour})
	wantBody(t, e, "d", store.TakeDelete, "once")
	mustAppend(t, e, "l", "leased", store.AppendOptions{})
	take(t, e, "l", store.TakeDelete) // never settled: the process died

	e = reopen(t, e, c)

	wantLen(t, e, "q", 3)
	wantStatus(t, e, "q", a.ID, store.StatePending)
	wantBody(t, e, "q", store.TakePending, "a")
	if dup := mustAppend(t, e, "q", "b2", store.AppendOptions{DedupKey: "kb", DedupWindow: time.Hour}); !dup.Duplicate {
		t.Fatal("dedup key of a queued message lost on reopen")
	}
	if dup := mustAppend(t, e, "d", "twice", store.AppendOptions{DedupKey: "kd", DedupWindow: time.Hour}); !dup.Duplicate || dup.ID != once.ID {
		t.Fatalf("dedup key of a delivered message lost on reopen: %+v, want a duplicate of %v", dup, once.ID)
	}
	wantBody(t, e, "q", store.TakeDelete, "b2")
	last := wantBody(t, e, "q", store.TakeDelete, "c")
	if n := mustAppend(t, e, "q", "d", store.AppendOptions{}); n.ID.Compare(last.ID) <= 0 {
		t.Fatalf("id after reopen %v not after %v", n.ID, last.ID)
	}
	m, ok, err := e.TakeReply(ctx, "r", r.ID)
	if !ok || err != nil || string(m.Body) != "answer" {
		t.Fatalf("reply after reopen: %q %v %v", m.Body, ok, err)
	}
	c.Advance(2 * time.Minute)
	wantBody(t, e, "ttl", store.TakeDelete, "kept")
	// A lease does not outlive its time (nor, in some engines, the
	// process): the message is queued.
	wantBody(t, e, "l", store.TakeDelete, "leased")
	return e
}
