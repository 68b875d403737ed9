package redisstore_test

import (
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
	"github.com/postern/postern/internal/store/storetest"
)

// TestWakeOnlyWhenParked: a write to a queue is announced on
// store.WakeTopic only while a waiter is parked on that queue, on any
// node; the announcement ends the park. On one redis-server, and on a
// Redis Cluster, where the queues' masters publish from their scripts.
func TestWakeOnlyWhenParked(t *testing.T) {
	t.Run("server", func(t *testing.T) { testWakeOnlyWhenParked(t, redistest.URL(t)) })
	t.Run("cluster", func(t *testing.T) { testWakeOnlyWhenParked(t, redistest.ClusterURL(t)) })
}

func testWakeOnlyWhenParked(t *testing.T, u string) {
	a, b := open(t, u, nil), open(t, u, nil) // two nodes
	defer a.Close()
	defer b.Close()
	woke := make(chan string, 16)
	cancel, err := b.Subscribe(ctx, store.WakeTopic, func(p []byte) { woke <- string(p) })
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	m := func(body string) store.Message { return store.Message{Body: []byte(body)} }
	appendTo := func(key, body string) {
		t.Helper()
		if _, err := a.Append(ctx, key, m(body), store.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	park := func(key string) {
		t.Helper()
		if l, ok, err := b.TakeOrPark(ctx, key, store.TakeDelete, time.Minute, time.Minute); ok || err != nil {
			t.Fatalf("park on %s: took %q %v %v", key, l.Body, ok, err)
		}
	}

	appendTo("t/quiet", "nobody waits") // not announced
	park("t/w")
	appendTo("t/w", "one") // announced: b parked
	appendTo("t/w", "two") // not: the announcement ended the park

	// A lease given back while a waiter is parked is announced.
	appendTo("t/g", "x")
	l, ok, err := a.Take(ctx, "t/g", store.TakeDelete, time.Minute)
	if !ok || err != nil {
		t.Fatalf("take: %v %v", ok, err)
	}
	park("t/g") // x is under a's lease: nothing to take
	if err := a.Settle(ctx, "t/g", []store.Lease{l}, false); err != nil {
		t.Fatal(err)
	}
	// A plain take (no park) leaves no park behind.
	if _, ok, err := b.Take(ctx, "t/none", store.TakeDelete, time.Minute); ok || err != nil {
		t.Fatalf("take on an empty queue: %v %v", ok, err)
	}
	appendTo("t/none", "unannounced")
	if err := a.Publish(ctx, store.WakeTopic, []byte("end")); err != nil {
		t.Fatal(err)
	}
	// On one server the payloads come in publish order; on a cluster
	// those of different masters may not: wait for all three, and let
	// nothing else come first.
	want := map[string]bool{"t/w": true, "t/g": true, "end": true}
	var got []string
	for len(want) > 0 {
		k := <-woke
		got = append(got, k)
		if !want[k] {
			t.Fatalf("announced %q, want t/w, t/g and end once each", got)
		}
		delete(want, k)
	}
}

// TestSettlingCarried: a delivery settled is carried to Redis by the
// store's next call on its queue, at no call of its own; the store sees it
// at once, another node once it is sent; Close sends what is still owed.
func TestSettlingCarried(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	u := srv.URL()
	a := openOwing(t, u)
	defer a.Close()
	b := open(t, u, nil)
	defer b.Close()
	for _, body := range []string{"x", "y"} {
		if _, err := a.Append(ctx, "t/c", store.Message{Body: []byte(body)}, store.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	wantLen := func(s *redisstore.Store, who string, want int) {
		t.Helper()
		if n, err := s.Len(ctx, "t/c"); err != nil || n != want {
			t.Fatalf("%s: Len = %d %v, want %d", who, n, err, want)
		}
	}
	// Redis caches the scripts before the calls are counted.
	if _, _, err := a.Take(ctx, "t/empty", store.TakeDelete, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Do("CONFIG", "RESETSTAT"); err != nil {
		t.Fatal(err)
	}
	l, ok, err := a.Take(ctx, "t/c", store.TakeDelete, time.Minute)
	if !ok || err != nil || string(l.Body) != "x" {
		t.Fatalf("take: %q %v %v", l.Body, ok, err)
	}
	if err := a.Settle(ctx, "t/c", []store.Lease{l}, true); err != nil {
		t.Fatal(err)
	}
	if n := scriptCalls(t, srv); n != 1 {
		t.Fatalf("a take and a delivery settled took %d calls, want 1", n)
	}
	wantLen(b, "another node before the settling is sent", 2) // x under its lease
	wantLen(a, "the node that settled", 1)                    // carried by Len
	wantLen(b, "another node after", 1)
	l, ok, err = a.Take(ctx, "t/c", store.TakeDelete, time.Minute)
	if !ok || err != nil || string(l.Body) != "y" {
		t.Fatalf("take: %q %v %v", l.Body, ok, err)
	}
	if err := a.Settle(ctx, "t/c", []store.Lease{l}, true); err != nil {
		t.Fatal(err)
	}
	a.Close()
	wantLen(b, "another node after Close", 0)
	if err := a.Settle(ctx, "t/c", []store.Lease{l}, true); err != store.ErrClosed {
		t.Fatalf("Settle after Close: %v", err)
	}
}

// openOwing opens a store whose settlings wait for a delay no test waits
// for: only a call on their queue, or Close, sends them.
func openOwing(t *testing.T, u string) *redisstore.Store {
	t.Helper()
	s, err := redisstore.Open(u, redisstore.Options{Logger: slog.New(slog.DiscardHandler), SettleDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// scriptCalls is how many functions Redis ran since the last RESETSTAT.
func scriptCalls(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	return commandCounts(t, srv)["fcall"]
}

// TestOlderVersionsQueuesRead: messages an older version stored (a bare
// stream entry with the record in the records hash) are read, taken,
// settled and counted as before, beside messages this version stores in
// the stream entry itself.
func TestOlderVersionsQueuesRead(t *testing.T) {
	u := redistest.URL(t)
	c, prefix := raw(t, u)
	s := open(t, u, nil)
	defer s.Close()
	base := prefix + "q{t/old}:"
	now := time.Now().UnixMilli()
	for i, body := range []string{"old1", "old2"} {
		id := fmt.Sprintf("%d-%d", now-10, i)
		for _, cmd := range [][]string{
			{"XADD", base + "s", id, "d", ""},
			{"HSET", base + "m", id, "0,0,0:10:text/plain" + body},
			{"HSET", base + "h", "f", strconv.Itoa(i + 1), "e", "-1"},
		} {
			if err := c.Do(ctx, c.B().Arbitrary(cmd...).Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.Append(ctx, "t/old", store.Message{Body: []byte("new")}, store.AppendOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Len(ctx, "t/old"); n != 3 || err != nil {
		t.Fatalf("Len = %d %v, want 3", n, err)
	}
	for _, want := range []string{"old1", "old2", "new"} {
		l, ok, err := s.Take(ctx, "t/old", store.TakeDelete, time.Minute)
		if err != nil || !ok || string(l.Body) != want {
			t.Fatalf("take: %q %v %v, want %q", l.Body, ok, err, want)
		}
		if want == "old1" && l.ContentType != "text/plain" {
			t.Fatalf("content type %q", l.ContentType)
		}
		if err := s.Settle(ctx, "t/old", []store.Lease{l}, true); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Len(ctx, "t/old"); n != 0 || err != nil {
		t.Fatalf("Len after = %d %v, want 0", n, err)
	}
	if n, err := c.Do(ctx, c.B().Exists().Key(base+"m").Build()).AsInt64(); n != 0 || err != nil {
		t.Fatalf("records hash left: %d %v", n, err)
	}
}

// commandCounts is what Redis ran since the last RESETSTAT, by command
// (every command: those clients sent and those functions ran).
func commandCounts(t *testing.T, srv *redistest.Server) map[string]int {
	t.Helper()
	r, err := srv.Do("INFO", "commandstats")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := r.(string)
	out := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "cmdstat_"), ":calls=")
		if !ok || name == "info" || strings.HasPrefix(name, "config") {
			continue
		}
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		out[name] = n
	}
	return out
}

// TestLeanHotPath: once a queue has its consumer group, a tunnel's
// produce and long-poll consume (an append without dedup key or expiry,
// a delete-mode take, its delivery settled and carried by the next take)
// run no function at all, and few commands per message.
func TestLeanHotPath(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	u := srv.URL()
	// A clock that stands still: the look at the group's leases the
	// first lean take makes lasts the whole test (see pelRecheck).
	c := storetest.NewClock()
	a, err := redisstore.Open(u, redisstore.Options{Logger: slog.New(slog.DiscardHandler), SettleDelay: time.Hour, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	const key, n = "t/hot", 20
	send := func(body string) {
		t.Helper()
		if _, err := a.Append(ctx, key, store.Message{Body: []byte(body)}, store.AppendOptions{MaxLen: 1000, Limit: 1000}); err != nil {
			t.Fatal(err)
		}
	}
	// Warm-up: the first take creates the group (a function), whose
	// settling a function carries.
	for range 2 {
		send("warm")
		l, ok, err := a.Take(ctx, key, store.TakeDelete, time.Minute)
		if !ok || err != nil {
			t.Fatalf("take: %v %v", ok, err)
		}
		a.Settle(ctx, key, []store.Lease{l}, true)
	}
	if _, err := srv.Do("CONFIG", "RESETSTAT"); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		send(fmt.Sprint(i))
		l, ok, err := a.Take(ctx, key, store.TakeDelete, time.Minute)
		if !ok || err != nil || string(l.Body) != fmt.Sprint(i) {
			t.Fatalf("take %d: %q %v %v", i, l.Body, ok, err)
		}
		if err := a.Settle(ctx, key, []store.Lease{l}, true); err != nil {
			t.Fatal(err)
		}
	}
	got := commandCounts(t, srv)
	// An empty take (the function's) carries the last settling; no
	// consumer of the group is left behind.
	if l, ok, err := a.Take(ctx, key, store.TakeDelete, time.Minute); ok || err != nil {
		t.Fatalf("take from an empty queue: %q %v", l.Body, err)
	}
	_, prefix := raw(t, u)
	if r, err := srv.Do("XINFO", "GROUPS", prefix+"q{"+key+"}:s"); err != nil {
		t.Fatal(err)
	} else if g := fmt.Sprint(r); !strings.Contains(g, "consumers 0 ") {
		t.Fatalf("group after the queue emptied: %s, want no consumer", g)
	}
	t.Logf("commands for %d messages: %v", n, got)
	// Per message, two round trips and no function: the append's MULTI
	// (XLEN, XADD, HINCRBY, HMGET) EXEC; the take's HMGET, ZRANGE and
	// XREADGROUP (XPENDING only once in pelRecheck); and XDEL and XGROUP
	// DELCONSUMER, the settling of the delivery before, carried by the
	// next call on the queue (here the append).
	want := map[string]int{
		"multi": n, "xlen": n, "xadd": n, "hincrby": n, "hmget": 2 * n, "exec": n,
		"zrange": n, "xreadgroup": n, "xdel": n, "xgroup|delconsumer": n,
	}
	if !maps.Equal(got, want) {
		t.Fatalf("commands for %d messages: %v, want %v", n, got, want)
	}
}

// TestLeanLeaseAcrossNodes: a message a lean node took is hidden from
// every other node, lean or not, until its lease runs out, also when the
// node that took it dies; then another node takes it again, in its place,
// and the dead node's late settling does not touch the new lease.
func TestLeanLeaseAcrossNodes(t *testing.T) {
	t.Run("server", func(t *testing.T) { testLeanLeaseAcrossNodes(t, redistest.URL(t)) })
	t.Run("cluster", func(t *testing.T) { testLeanLeaseAcrossNodes(t, redistest.ClusterURL(t)) })
}

func testLeanLeaseAcrossNodes(t *testing.T, u string) {
	c := storetest.NewClock()
	openNode := func(fnOnly bool) *redisstore.Store {
		s, err := redisstore.Open(u, redisstore.Options{Logger: slog.New(slog.DiscardHandler), Now: c.Now, FunctionsOnly: fnOnly, SettleDelay: -1})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b, f := openNode(false), openNode(false), openNode(true)
	defer b.Close()
	defer f.Close()
	const key = "t/lease"
	var ids []store.ID
	for _, body := range []string{"m1", "m2", "m3"} {
		r, err := a.Append(ctx, key, store.Message{Body: []byte(body)}, store.AppendOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	take := func(s *redisstore.Store, want string) store.Lease {
		t.Helper()
		l, ok, err := s.Take(ctx, key, store.TakeDelete, time.Minute)
		if err != nil || (want == "" && ok) || (want != "" && (!ok || string(l.Body) != want)) {
			t.Fatalf("take: %q %v %v, want %q", l.Body, ok, err, want)
		}
		return l
	}
	take(a, "m1") // the function: the group is new
	l2 := take(a, "m2")
	// Warm: the next takes of b are lean.
	lb := take(b, "m3")
	if err := b.Settle(ctx, key, []store.Lease{lb}, false); err != nil {
		t.Fatal(err)
	}
	take(f, "m3") // m1 and m2 under a's leases, for a function too
	a.Close()     // a dies: m1 and m2 stay under their leases
	take(b, "")
	c.Advance(time.Minute + time.Second)
	n1 := take(b, "m1") // in its place
	n2 := take(f, "m2")
	if n1.ID != ids[0] || n2.ID != ids[1] {
		t.Fatalf("retaken %v %v, want %v %v", n1.ID, n2.ID, ids[0], ids[1])
	}
	// a's late settlings, sent by another node of a's: run out, they
	// leave the new leases as they are.
	a2 := openNode(false)
	defer a2.Close()
	if err := a2.Settle(ctx, key, []store.Lease{l2}, true); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Len(ctx, key); n != 3 || err != nil {
		t.Fatalf("Len = %d %v, want 3", n, err)
	}
	if err := b.Settle(ctx, key, []store.Lease{n1, n2}, true); err != nil {
		t.Fatal(err)
	}
	if n, err := f.Len(ctx, key); n != 1 || err != nil {
		t.Fatalf("Len = %d %v, want 1 (m3, under f's lease)", n, err)
	}
}

// TestLeanRunOutSeenWithinRecheck: a take on the lean path looks at the
// group's leases (XPENDING) once in pelRecheck, at its own leases'
// deadlines and at those the look found: another node's lease taken
// since, run out, is handed out again at the latest pelRecheck after the
// look, in its place, before what came after it.
func TestLeanRunOutSeenWithinRecheck(t *testing.T) {
	u := redistest.URL(t)
	c := storetest.NewClock()
	open := func() *redisstore.Store {
		s, err := redisstore.Open(u, redisstore.Options{Logger: slog.New(slog.DiscardHandler), Now: c.Now, SettleDelay: -1})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := open(), open()
	defer a.Close()
	defer b.Close()
	const key = "t/recheck"
	for _, body := range []string{"m1", "m2", "m3", "m4", "m5"} {
		if _, err := a.Append(ctx, key, store.Message{Body: []byte(body)}, store.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	take := func(s *redisstore.Store, d time.Duration, want string) store.Lease {
		t.Helper()
		l, ok, err := s.Take(ctx, key, store.TakeDelete, d)
		if err != nil || !ok || string(l.Body) != want {
			t.Fatalf("take: %q %v %v, want %q", l.Body, ok, err, want)
		}
		return l
	}
	take(a, time.Minute, "m1") // the function: the group is new
	take(b, time.Minute, "m2") // lean: b looks at the leases
	take(a, 10*time.Millisecond, "m3")
	c.Advance(20 * time.Millisecond) // a's lease on m3 ran out
	take(b, time.Minute, "m4")       // b's look is not due yet
	c.Advance(redisstore.PelRecheck)
	if l := take(b, time.Minute, "m3"); l.Token == 0 {
		t.Fatal("m3 handed out with no lease")
	}
	take(b, time.Minute, "m5")
}

// TestPreviousVersionQueue: a queue the previous version left (no count
// of messages with expiry, a lease and a pending message in its sets) is
// served by the functions, as before, until it is empty; from then on the
// lean path takes over.
func TestPreviousVersionQueue(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	u := srv.URL()
	c, prefix := raw(t, u)
	s := open(t, u, nil)
	defer s.Close()
	base := prefix + "q{t/prev}:"
	now := time.Now().UnixMilli()
	lease := strconv.FormatInt((now+60_000)*1000+7, 10)
	var ids []string
	for i, body := range []string{"leased", "pending", "queued"} {
		id := fmt.Sprintf("%d-%d", now-10, i)
		ids = append(ids, id)
		cmd := []string{"XADD", base + "s", id, "r", "0,0,0:0:" + body}
		if err := c.Do(ctx, c.B().Arbitrary(cmd...).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	lex := func(id string) string {
		ms, seq, _ := strings.Cut(id, "-")
		return fmt.Sprintf("%016s-%016s", ms, seq)
	}
	for _, cmd := range [][]string{
		{"HSET", base + "h", "f", "3", "e", "-1", "u", "nlp"},
		{"ZADD", base + "l", lease, lex(ids[0])},
		{"ZADD", base + "p", "0", lex(ids[1])},
	} {
		if err := c.Do(ctx, c.B().Arbitrary(cmd...).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Append(ctx, "t/prev", store.Message{Body: []byte("new")}, store.AppendOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"queued", "new"} {
		l, ok, err := s.Take(ctx, "t/prev", store.TakeDelete, time.Minute)
		if err != nil || !ok || string(l.Body) != want {
			t.Fatalf("take: %q %v %v, want %q", l.Body, ok, err, want)
		}
		if err := s.Settle(ctx, "t/prev", []store.Lease{l}, true); err != nil {
			t.Fatal(err)
		}
	}
	if l, ok, err := s.Take(ctx, "t/prev", store.TakeDelete, time.Minute); ok || err != nil {
		t.Fatalf("took %q %v while the rest is leased or pending", l.Body, err)
	}
	for _, id := range ids[:2] {
		mid, _ := store.ParseID(id)
		if ok, err := s.Ack(ctx, "t/prev", mid); !ok || err != nil {
			t.Fatalf("ack %s: %v %v", id, ok, err)
		}
	}
	// Empty: known to hold no message with expiry; the lean path serves.
	if l, ok, err := s.Take(ctx, "t/prev", store.TakeDelete, time.Minute); ok || err != nil {
		t.Fatalf("took %q %v from an empty queue", l.Body, err)
	}
	if _, err := s.Append(ctx, "t/prev", store.Message{Body: []byte("lean")}, store.AppendOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Do("CONFIG", "RESETSTAT"); err != nil {
		t.Fatal(err)
	}
	if l, ok, err := s.Take(ctx, "t/prev", store.TakeDelete, time.Minute); !ok || err != nil || string(l.Body) != "lean" {
		t.Fatalf("take: %q %v %v", l.Body, ok, err)
	}
	if got := commandCounts(t, srv); got["fcall"] != 0 || got["xreadgroup"] != 1 {
		t.Fatalf("after the queue emptied: %v, want a lean take", got)
	}
}

// TestLeanClearUnderLease: Clear while a lean lease is out removes the
// message and the stream's group; the lease's settling is then a no-op,
// and the queue serves new messages, in order, on the lean path again.
func TestLeanClearUnderLease(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := openOwing(t, srv.URL())
	defer s.Close()
	const key = "t/clear"
	round := func(bodies ...string) []store.Lease {
		t.Helper()
		for _, b := range bodies {
			if _, err := s.Append(ctx, key, store.Message{Body: []byte(b)}, store.AppendOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var ls []store.Lease
		for _, b := range bodies {
			l, ok, err := s.Take(ctx, key, store.TakeDelete, time.Minute)
			if !ok || err != nil || string(l.Body) != b {
				t.Fatalf("take: %q %v %v, want %q", l.Body, ok, err, b)
			}
			ls = append(ls, l)
		}
		return ls
	}
	if err := s.Settle(ctx, key, round("w1", "w2"), true); err != nil {
		t.Fatal(err)
	}
	ls := round("a")
	if n, err := s.Clear(ctx, key); n != 1 || err != nil {
		t.Fatalf("Clear = %d %v, want 1", n, err)
	}
	if err := s.Settle(ctx, key, ls, true); err != nil {
		t.Fatal(err)
	}
	next := round("b", "c")
	if err := s.Settle(ctx, key, next, true); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Do("CONFIG", "RESETSTAT"); err != nil {
		t.Fatal(err)
	}
	next = round("d")
	if err := s.Settle(ctx, key, next, true); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Len(ctx, key); n != 0 || err != nil {
		t.Fatalf("Len = %d %v, want 0", n, err)
	}
	if got := commandCounts(t, srv); got["xreadgroup"] != 1 {
		t.Fatalf("after Clear: %v, want a lean take", got)
	}
}

// TestFunctionLeaseSettledPlain: the delivery of a message the take
// function handed out (here the first take of a queue, which creates its
// consumer group) is settled with plain commands when the message has no
// expiry and no dedup key, so the next take runs no function either; one
// with an expiry is left to the functions. Another node sees each
// settling.
func TestFunctionLeaseSettledPlain(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	u := srv.URL()
	a := openOwing(t, u)
	defer a.Close()
	b := open(t, u, nil)
	defer b.Close()
	_, prefix := raw(t, u)
	for _, tc := range []struct {
		key       string
		opts      store.AppendOptions
		wantCalls int
	}{
		{"t/plain", store.AppendOptions{}, 0},
		{"t/expiring", store.AppendOptions{TTL: time.Hour}, 1},
	} {
		t.Run(tc.key, func(t *testing.T) {
			for _, body := range []string{"x", "y"} {
				if _, err := a.Append(ctx, tc.key, store.Message{Body: []byte(body)}, tc.opts); err != nil {
					t.Fatal(err)
				}
			}
			l, ok, err := a.Take(ctx, tc.key, store.TakeDelete, time.Minute)
			if !ok || err != nil || string(l.Body) != "x" {
				t.Fatalf("first take: %q %v %v", l.Body, ok, err)
			}
			first := l.ID
			if err := a.Settle(ctx, tc.key, []store.Lease{l}, true); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Do("CONFIG", "RESETSTAT"); err != nil {
				t.Fatal(err)
			}
			l, ok, err = a.Take(ctx, tc.key, store.TakeDelete, time.Minute)
			if !ok || err != nil || string(l.Body) != "y" {
				t.Fatalf("second take: %q %v %v", l.Body, ok, err)
			}
			if n := scriptCalls(t, srv); n != tc.wantCalls {
				t.Fatalf("the second take, carrying the first delivery, ran %d functions, want %d", n, tc.wantCalls)
			}
			if n, err := b.Len(ctx, tc.key); err != nil || n != 1 {
				t.Fatalf("another node: Len = %d %v, want 1 (y under its lease)", n, err)
			}
			if r, err := srv.Do("ZRANGE", prefix+"q{"+tc.key+"}:l", "0", "-1"); err != nil {
				t.Fatal(err)
			} else if got := fmt.Sprint(r); strings.Contains(got, fmt.Sprintf("%016d-%016d", first.MS, first.Seq)) {
				t.Fatalf("the delivered message's lease is left in L: %s", got)
			}
			if err := a.Settle(ctx, tc.key, []store.Lease{l}, true); err != nil {
				t.Fatal(err)
			}
			if _, ok, err := a.Take(ctx, tc.key, store.TakeDelete, time.Minute); ok || err != nil {
				t.Fatalf("take after both delivered: %v %v", ok, err)
			}
			if n, err := b.Len(ctx, tc.key); err != nil || n != 0 {
				t.Fatalf("another node at the end: Len = %d %v, want 0", n, err)
			}
		})
	}
}
