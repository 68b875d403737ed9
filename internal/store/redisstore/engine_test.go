package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
	"github.com/postern/postern/internal/store/storetest"
)

var ctx = context.Background()

// raw returns a plain client on the server of url, and url's key prefix.
func raw(t testing.TB, rawURL string) (rueidis.Client, string) {
	t.Helper()
	opt, err := rueidis.ParseURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	u, _ := url.Parse(rawURL)
	return c, u.Query().Get("prefix")
}

func pttl(t *testing.T, c rueidis.Client, key string) time.Duration {
	t.Helper()
	n, err := c.Do(ctx, c.B().Pttl().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	if n < 0 {
		return time.Duration(n)
	}
	return time.Duration(n) * time.Millisecond
}

// TestGarbageCollectionTTLs checks that Redis TTLs follow the data: a key
// lives for its longest-lived data plus the margin, for ever while a message
// without expiry is queued, and every key of a queue shares one hash tag.
func TestGarbageCollectionTTLs(t *testing.T) {
	u := redistest.URL(t)
	c, prefix := raw(t, u)
	margin := time.Minute
	s, err := redisstore.Open(u, redisstore.Options{GCMargin: margin})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// A key lives at least as long as its data plus the margin, with up to
	// one more margin of headroom (so that most writes set no TTL).
	near := func(got, want time.Duration) bool { return got <= want+margin && got > want-5*time.Second }

	// Records live in the stream's entries; the meta hash goes with it.
	stream, meta := prefix+"q{t/gc}:s", prefix+"q{t/gc}:h"
	if _, err := s.Append(ctx, "t/gc", store.Message{Body: []byte("x")}, store.AppendOptions{TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if got := pttl(t, c, stream); !near(got, time.Hour+margin) {
		t.Fatalf("stream TTL %v, want about %v", got, time.Hour+margin)
	}
	if got := pttl(t, c, meta); !near(got, time.Hour+margin) {
		t.Fatalf("meta TTL %v", got)
	}
	r, err := s.Append(ctx, "t/gc", store.Message{Body: []byte("forever")}, store.AppendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := pttl(t, c, stream); got != -1 {
		t.Fatalf("stream TTL with a message without expiry = %v, want none", got)
	}
	if ok, err := s.Ack(ctx, "t/gc", r.ID); !ok || err != nil {
		t.Fatalf("Ack = %v, %v", ok, err)
	}
	if got := pttl(t, c, stream); !near(got, time.Hour+margin) {
		t.Fatalf("stream TTL after the last message without expiry left = %v", got)
	}

	// Replies have keys of their own with the reply TTL plus the margin.
	r, _ = s.Append(ctx, "t/gc", store.Message{Body: []byte("q")}, store.AppendOptions{TTL: time.Hour})
	if _, ok, _ := takeNow(s, "t/gc", store.TakePending); !ok {
		t.Fatal("nothing pending")
	}
	for {
		m, ok, _ := takeNow(s, "t/gc", store.TakePending)
		if !ok {
			t.Fatal("nothing pending")
		}
		if m.ID == r.ID {
			break
		}
		s.Ack(ctx, "t/gc", m.ID)
	}
	if ok, err := s.Reply(ctx, "t/gc", r.ID, store.Message{Body: []byte("a")}, 2*time.Minute); !ok || err != nil {
		t.Fatalf("Reply = %v, %v", ok, err)
	}
	if got := pttl(t, c, prefix+"q{t/gc}:r:"+r.ID.String()); !near(got, 2*time.Minute+margin) {
		t.Fatalf("reply TTL %v", got)
	}

	// Every key of the queue is in one Cluster slot.
	keys, err := c.Do(ctx, c.B().Keys().Pattern(prefix+"*").Build()).AsStrSlice()
	if err != nil || len(keys) < 3 {
		t.Fatalf("KEYS = %v, %v", keys, err)
	}
	slot := -1
	for _, k := range keys {
		n, err := c.Do(ctx, c.B().Arbitrary("CLUSTER", "KEYSLOT").Args(k).Build()).AsInt64()
		if err != nil {
			// CLUSTER KEYSLOT needs cluster mode on some builds; the tag
			// itself is checked by name then.
			if !strings.Contains(k, "{t/gc}") {
				t.Fatalf("key %q lacks the queue's hash tag", k)
			}
			continue
		}
		if slot >= 0 && int(n) != slot {
			t.Fatalf("key %q in slot %d, others in %d", k, n, slot)
		}
		slot = int(n)
	}
}

// TestHashTagsOfOddKeys: keys with braces or nothing still get one slot per
// queue and stay apart from each other.
// takeNow takes a message of key and settles it as delivered: a consume
// that went well.
func takeNow(e store.Engine, key string, mode store.TakeMode) (store.Message, bool, error) {
	l, ok, err := e.Take(ctx, key, mode, time.Minute)
	if err == nil && ok {
		err = e.Settle(ctx, key, []store.Lease{l}, true)
	}
	return l.Message, ok, err
}

func TestHashTagsOfOddKeys(t *testing.T) {
	u := redistest.URL(t)
	s := open(t, u, nil)
	defer s.Close()
	for _, k := range []string{"", "}", "{", "{}", "a}b{c", "%7B", "%"} {
		if _, err := s.Append(ctx, k, store.Message{Body: []byte("v" + k)}, store.AppendOptions{}); err != nil {
			t.Fatalf("Append(%q): %v", k, err)
		}
	}
	for _, k := range []string{"", "}", "{", "{}", "a}b{c", "%7B", "%"} {
		m, ok, err := takeNow(s, k, store.TakeDelete)
		if err != nil || !ok || string(m.Body) != "v"+k {
			t.Fatalf("Take(%q) = %q %v %v", k, m.Body, ok, err)
		}
	}
}

func TestPrefixMustNotHoldBraces(t *testing.T) {
	redistest.Need(t)
	if _, err := redisstore.Open("redis://127.0.0.1:1/0", redisstore.Options{Prefix: "a{b}"}); err == nil {
		t.Fatal("prefix with braces accepted")
	}
}

func TestOpenFailsClearly(t *testing.T) {
	_, err := redisstore.Open("redis://user:secret@127.0.0.1:1/0", redisstore.Options{DialTimeout: 200 * time.Millisecond})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open of a closed port: %v, want ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error leaks the password or spans lines: %q", err)
	}
	if _, err := redisstore.Open("redis://u:secret@[bad", redisstore.Options{}); err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("bad URL: %v", err)
	}
}

// TestTwoNodesShareQueues: what one node appends another takes, and
// concurrent takers on two nodes never get one message twice.
func TestTwoNodesShareQueues(t *testing.T) {
	u := redistest.URL(t)
	a, b := open(t, u, nil), open(t, u, nil)
	defer a.Close()
	defer b.Close()
	const total = 400
	for i := range total {
		if _, err := a.Append(ctx, "t/shared", store.Message{Body: []byte(fmt.Sprint(i))}, store.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for _, e := range []*redisstore.Store{a, b, a, b} {
		wg.Go(func() {
			for {
				m, ok, err := takeNow(e, "t/shared", store.TakeDelete)
				if err != nil {
					t.Error(err)
					return
				}
				if !ok {
					return
				}
				mu.Lock()
				if seen[string(m.Body)] {
					t.Errorf("%q taken twice", m.Body)
				}
				seen[string(m.Body)] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != total {
		t.Fatalf("took %d of %d", len(seen), total)
	}
}

// TestIDsIncreaseAcrossSkewedClocks: a node whose clock is behind still
// appends after the newest id.
func TestIDsIncreaseAcrossSkewedClocks(t *testing.T) {
	u := redistest.URL(t)
	ahead := storetest.NewClock()
	ahead.Advance(time.Hour)
	behind := storetest.NewClock()
	a, b := open(t, u, ahead), open(t, u, behind)
	defer a.Close()
	defer b.Close()
	var last store.ID
	for i := range 10 {
		e := a
		if i%2 == 1 {
			e = b
		}
		r, err := e.Append(ctx, "q", store.Message{Body: []byte("x")}, store.AppendOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.ID.Compare(last) <= 0 {
			t.Fatalf("append %d: id %v not after %v", i, r.ID, last)
		}
		last = r.ID
	}
}

func TestDirectory(t *testing.T) { testDirectory(t, redistest.URL(t)) }

func testDirectory(t *testing.T, u string) {
	c := storetest.NewClock()
	s := open(t, u, c)
	defer s.Close()
	var d store.Directory = s
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(d.Register(ctx, "relay", "cam1", "http://10.0.0.1:8080", time.Minute))
	must(d.Register(ctx, "relay", "cam1", "http://10.0.0.2:8080", 2*time.Minute))
	must(d.Register(ctx, "expose", "cam1", "http://10.0.0.3:8080", time.Minute))
	got, err := d.Lookup(ctx, "relay", "cam1")
	must(err)
	slices.Sort(got)
	if fmt.Sprint(got) != "[http://10.0.0.1:8080 http://10.0.0.2:8080]" {
		t.Fatalf("Lookup = %v", got)
	}
	c.Advance(90 * time.Second)
	got, _ = d.Lookup(ctx, "relay", "cam1")
	if fmt.Sprint(got) != "[http://10.0.0.2:8080]" {
		t.Fatalf("Lookup after the first TTL = %v", got)
	}
	must(d.Register(ctx, "relay", "cam1", "http://10.0.0.2:8080", time.Minute)) // renew
	must(d.Unregister(ctx, "relay", "cam1", "http://10.0.0.2:8080"))
	if got, _ = d.Lookup(ctx, "relay", "cam1"); len(got) != 0 {
		t.Fatalf("Lookup after Unregister = %v", got)
	}
	if got, _ = d.Lookup(ctx, "relay", "nobody"); len(got) != 0 {
		t.Fatalf("Lookup of unknown = %v", got)
	}

	must(d.Heartbeat(ctx, store.NodeInfo{ID: "b", Addr: "http://b:1"}, time.Minute))
	must(d.Heartbeat(ctx, store.NodeInfo{ID: "a", Addr: "http://a:1"}, 3*time.Minute))
	nodes, err := d.Nodes(ctx)
	must(err)
	if fmt.Sprint(nodes) != "[{a http://a:1} {b http://b:1}]" {
		t.Fatalf("Nodes = %v", nodes)
	}
	c.Advance(2 * time.Minute)
	if nodes, _ = d.Nodes(ctx); fmt.Sprint(nodes) != "[{a http://a:1}]" {
		t.Fatalf("Nodes after b's TTL = %v", nodes)
	}
	must(d.Heartbeat(ctx, store.NodeInfo{ID: "a", Addr: "http://a:1"}, 0)) // leaves
	if nodes, _ = d.Nodes(ctx); len(nodes) != 0 {
		t.Fatalf("Nodes after a left = %v", nodes)
	}
}

// collector gathers payloads delivered to a subscription.
type collector struct {
	mu  sync.Mutex
	got []string
	ch  chan struct{}
}

func newCollector() *collector { return &collector{ch: make(chan struct{}, 1)} }

func (c *collector) fn(p []byte) {
	c.mu.Lock()
	c.got = append(c.got, string(p))
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}

// waitFor waits until n payloads arrived, failing after 10 s.
func (c *collector) waitFor(t *testing.T, n int) []string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		got := slices.Clone(c.got)
		c.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-c.ch:
		case <-timeout:
			t.Fatalf("got %d payloads, want %d: %v", len(got), n, got)
		}
	}
}

func TestFanoutAcrossNodes(t *testing.T) { testFanoutAcrossNodes(t, redistest.URL(t)) }

func testFanoutAcrossNodes(t *testing.T, u string) {
	a, b := open(t, u, nil), open(t, u, nil)
	defer a.Close()
	defer b.Close()
	onA, onB, other := newCollector(), newCollector(), newCollector()
	cancelA, err := a.Subscribe(ctx, "topic", onA.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer cancelA()
	cancelB, err := b.Subscribe(ctx, "topic", onB.fn)
	if err != nil {
		t.Fatal(err)
	}
	cancelO, err := b.Subscribe(ctx, "other", other.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer cancelO()
	// Two publishers on two nodes: each one's payloads arrive in order.
	var wg sync.WaitGroup
	for _, p := range []struct {
		name string
		s    *redisstore.Store
	}{{"a", a}, {"b", b}} {
		wg.Go(func() {
			for i := range 100 {
				if err := p.s.Publish(ctx, "topic", []byte(fmt.Sprint(p.name, i))); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for _, c := range []*collector{onA, onB} {
		got := c.waitFor(t, 200)
		next := map[byte]int{}
		for _, p := range got {
			var i int
			fmt.Sscanf(p[1:], "%d", &i)
			if next[p[0]] != i {
				t.Fatalf("publisher %c: payload %d arrived before %d", p[0], i, next[p[0]])
			}
			next[p[0]]++
		}
	}
	if other.got != nil {
		t.Fatalf("other topic got %v", other.got)
	}
	// After cancel, b's subscriber hears nothing more; a's still does.
	cancelB()
	if err := b.Publish(ctx, "topic", []byte("late")); err != nil {
		t.Fatal(err)
	}
	onA.waitFor(t, 201)
	if err := b.Publish(ctx, "other", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	other.waitFor(t, 1) // b's connection delivered everything up to here
	if n := len(onB.waitFor(t, 200)); n != 200 {
		t.Fatalf("cancelled subscriber got %d payloads", n)
	}
}

// TestFanoutManyTopics subscribes and cancels a thousand topics on one node.
func TestFanoutManyTopics(t *testing.T) {
	u := redistest.URL(t)
	a, b := open(t, u, nil), open(t, u, nil)
	defer a.Close()
	defer b.Close()
	const n = 1000
	cs := make([]*collector, n)
	cancels := make([]func(), n)
	var wg sync.WaitGroup
	for i := range n {
		cs[i] = newCollector()
		wg.Go(func() {
			c, err := a.Subscribe(ctx, fmt.Sprint("topic/", i), cs[i].fn)
			if err != nil {
				t.Error(err)
				return
			}
			cancels[i] = c
		})
	}
	wg.Wait()
	for i := range n {
		if err := b.Publish(ctx, fmt.Sprint("topic/", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if got := cs[i].waitFor(t, 1); got[0] != fmt.Sprint(i) {
			t.Fatalf("topic %d got %v", i, got)
		}
	}
	for _, c := range cancels {
		c()
	}
}

// TestFanoutSurvivesRestart: after Redis restarts, subscriptions are made
// again by themselves and payloads flow.
func TestFanoutSurvivesRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	u := srv.URL()
	a := open(t, u, nil)
	defer a.Close()
	got := newCollector()
	cancel, err := a.Subscribe(ctx, "topic", got.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	srv.Kill(t)
	if err := a.Publish(ctx, "topic", []byte("lost")); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Publish with Redis down: %v, want ErrUnavailable", err)
	}
	// A subscription made while Redis is down returns at once and is made
	// when the connection is back.
	late := newCollector()
	cancelLate, err := a.Subscribe(ctx, "late", late.fn)
	if err != nil {
		t.Fatalf("Subscribe with Redis down: %v", err)
	}
	defer cancelLate()
	srv.Restart(t)
	// Publish until the resubscribed connection hears one: delivery is best
	// effort while it reconnects.
	for _, c := range []struct {
		topic string
		got   *collector
	}{{"topic", got}, {"late", late}} {
		deadline := time.Now().Add(10 * time.Second)
	publish:
		for {
			if err := a.Publish(ctx, c.topic, []byte("after")); err != nil && !errors.Is(err, store.ErrUnavailable) {
				t.Fatal(err)
			}
			select {
			case <-c.got.ch:
				break publish
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no payload on %q after Redis restarted", c.topic)
			}
		}
	}
}

// TestTLS: rediss:// URLs speak TLS, and a server whose certificate is not
// trusted is refused with a one-line reason.
func TestTLS(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{TLS: true})
	u := srv.URL()
	if !strings.HasPrefix(u, "rediss://") {
		t.Fatalf("URL %q", u)
	}
	s, err := redisstore.Open(u, redisstore.Options{TLS: srv.TLSConfig()})
	if err != nil {
		t.Fatalf("Open over TLS: %v", err)
	}
	defer s.Close()
	if _, err := s.Append(ctx, "t/tls", store.Message{Body: []byte("secret")}, store.AppendOptions{}); err != nil {
		t.Fatal(err)
	}
	got := newCollector()
	cancel, err := s.Subscribe(ctx, "tls", got.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	if err := s.Publish(ctx, "tls", []byte("over tls")); err != nil {
		t.Fatal(err)
	}
	if p := got.waitFor(t, 1); p[0] != "over tls" {
		t.Fatalf("payload %q", p)
	}
	if m, ok, err := takeNow(s, "t/tls", store.TakeDelete); !ok || err != nil || string(m.Body) != "secret" {
		t.Fatalf("Take over TLS = %q %v %v", m.Body, ok, err)
	}
	// Without the CA the certificate is not trusted.
	_, err = redisstore.Open(u, redisstore.Options{DialTimeout: time.Second})
	if err == nil || strings.ContainsAny(err.Error(), "\r\n") {
		t.Fatalf("Open trusting nothing: %v", err)
	}
	t.Logf("untrusted server: %v", err)
}

// TestEveryKeyGetsATTL: whatever mix of operations a queue saw, once it
// holds no message without expiry every key it left behind in Redis has a
// TTL, so nothing is kept for ever.
func TestEveryKeyGetsATTL(t *testing.T) {
	u := redistest.URL(t)
	c, prefix := raw(t, u)
	s := open(t, u, nil)
	defer s.Close()
	q := "t/mix"
	ttl := store.AppendOptions{TTL: time.Hour, DedupKey: "k", DedupWindow: time.Hour}
	r1, _ := s.Append(ctx, q, store.Message{Body: []byte("a")}, ttl)
	s.Append(ctx, q, store.Message{Body: []byte("b")}, store.AppendOptions{TTL: time.Hour})
	forever, _ := s.Append(ctx, q, store.Message{Body: []byte("c")}, store.AppendOptions{})
	l, _, _ := s.Take(ctx, q, store.TakeDelete, time.Minute) // a, under a lease
	if l.ID != r1.ID {
		t.Fatalf("took %v", l.ID)
	}
	if err := s.Settle(ctx, q, []store.Lease{l}, false); err != nil { // a back at its place
		t.Fatal(err)
	}
	if _, ok, _ := takeNow(s, q, store.TakePending); !ok { // a pending: dedup window remembered
		t.Fatal("nothing pending")
	}
	// A call on the queue waits for the settling the take left to the
	// store's timer: after it, none of the changes above is on its way.
	if _, err := s.Len(ctx, q); err != nil {
		t.Fatal(err)
	}
	keys := func() map[string]time.Duration {
		names, err := c.Do(ctx, c.B().Keys().Pattern(prefix+"q{"+q+"}:*").Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]time.Duration{}
		for _, k := range names {
			// A settling sent meanwhile may empty (remove) a key.
			if d := pttl(t, c, k); d != -2 {
				out[k] = d
			}
		}
		return out
	}
	for k, d := range keys() {
		if d != -1 && !strings.HasSuffix(k, ":w") {
			t.Fatalf("%s has TTL %v while a message without expiry is queued", k, d)
		}
	}
	// The records hash (m) holds only records replaced in place, and the
	// lease set (l) only leases: neither need be there now.
	got := keys()
	for _, suffix := range []string{"s", "p", "k", "w", "h"} {
		if _, ok := got[prefix+"q{"+q+"}:"+suffix]; !ok {
			t.Fatalf("no %s key among %v: want the stream (s), pending (p), dedup (k), dedup window (w) and meta (h) keys", suffix, got)
		}
	}
	if ok, _ := s.Ack(ctx, q, forever.ID); !ok {
		t.Fatal("Ack of the message without expiry failed")
	}
	for k, d := range keys() {
		if d <= 0 {
			t.Fatalf("%s has no TTL (%v) once only expiring data is left", k, d)
		}
	}
}

// TestOneConnectionUnderLoad: a node pipelines the commands of all its
// concurrent calls onto one connection per Redis (beside the one its
// subscriptions share), so that Redis reads many calls' commands at once.
func TestOneConnectionUnderLoad(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	u := srv.URL()
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	s := open(t, u+sep+"client_name=under-load", nil)
	defer s.Close()
	// A subscription (confirmed when Subscribe returns) tells its
	// connection (sub=1) from the others.
	cancel, err := s.Subscribe(ctx, "topic", func([]byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			key := fmt.Sprint("t/load", i%8)
			if _, err := s.Append(ctx, key, store.Message{Body: []byte("x")}, store.AppendOptions{}); err != nil {
				errs <- err
				return
			}
			if _, ok, err := s.Take(ctx, key, store.TakeDelete, time.Minute); err != nil || !ok {
				errs <- fmt.Errorf("take: %v %v", ok, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r, err := srv.Do("CLIENT", "LIST")
	if err != nil {
		t.Fatal(err)
	}
	list := fmt.Sprint(r)
	var subs, cmds int
	for _, line := range strings.Split(list, "\n") {
		switch {
		case !strings.Contains(line, " name=under-load "):
		case strings.Contains(line, " sub=0 "):
			cmds++
		default:
			subs++
		}
	}
	if cmds != 1 || subs != 1 {
		t.Fatalf("%d connections for commands and %d for subscriptions, want 1 of each:\n%s", cmds, subs, list)
	}
}
