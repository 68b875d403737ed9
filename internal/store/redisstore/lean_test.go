package redisstore_test

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
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
	// A delay no test waits for: only a call or Close sends a settling.
	a, err := redisstore.Open(u, redisstore.Options{Logger: slog.New(slog.DiscardHandler), SettleDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
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

// scriptCalls is how many functions Redis ran since the last RESETSTAT.
func scriptCalls(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	r, err := srv.Do("INFO", "commandstats")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := r.(string)
	n := 0
	for _, line := range strings.Split(info, "\n") {
		for _, c := range []string{"cmdstat_fcall:calls="} {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), c); ok {
				k, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
				n += k
			}
		}
	}
	return n
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
