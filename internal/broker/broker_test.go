package broker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newBroker(t *testing.T, st store.Engine, opts broker.Options) *broker.Broker {
	t.Helper()
	b, err := broker.New(st, opts, capability.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Shutdown(context.Background()) })
	return b
}

func subscribe(t *testing.T, b *broker.Broker, ch string, opts broker.SubscribeOptions) *broker.Subscription {
	t.Helper()
	s, err := b.Subscribe(context.Background(), ch, opts)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", ch, err)
	}
	t.Cleanup(s.Close)
	return s
}

func publish(t testing.TB, b *broker.Broker, ch, body string) broker.PublishResult {
	t.Helper()
	res, err := b.Publish(context.Background(), ch, broker.Message{Body: []byte(body)})
	if err != nil {
		t.Fatalf("Publish(%q, %q): %v", ch, body, err)
	}
	return res
}

// next reads one message, failing after 10 s.
func next(t testing.TB, s *broker.Subscription) *broker.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next on %q: %v", s.Channel(), err)
	}
	return m
}

func bodies(t testing.TB, s *broker.Subscription, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		out[i] = string(next(t, s).Body)
	}
	return out
}

func wantNothing(t *testing.T, s *broker.Subscription) {
	t.Helper()
	if m, ok, err := s.TryNext(); ok || err != nil {
		t.Fatalf("unexpected %v %v", m, err)
	}
}

func TestPublishReachesEverySubscriberInOrder(t *testing.T) {
	b := newBroker(t, nil, broker.Options{})
	a := subscribe(t, b, "/x", broker.SubscribeOptions{})
	c := subscribe(t, b, "/x", broker.SubscribeOptions{})
	other := subscribe(t, b, "/y", broker.SubscribeOptions{})
	for i := range 5 {
		if res := publish(t, b, "/x", strconv.Itoa(i)); res.Delivered != 2 || res.ID.IsZero() {
			t.Fatalf("publish result %+v", res)
		}
	}
	want := []string{"0", "1", "2", "3", "4"}
	for _, s := range []*broker.Subscription{a, c} {
		if got := bodies(t, s, 5); !slices.Equal(got, want) {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	wantNothing(t, other)
	// Binary flag travels.
	b.Publish(context.Background(), "/y", broker.Message{Binary: true, Body: []byte{0xff}})
	if m := next(t, other); !m.Binary || string(m.Body) != "\xff" {
		t.Fatalf("binary message %+v", m)
	}
	if st := b.Stats(); st.Channels != 2 || st.Subscribers != 3 || st.Published != 6 || st.Delivered != 11 || st.History != "memory" || st.Fanout {
		t.Fatalf("stats %+v", st)
	}
}

func TestNoSubscribersDropsAndCounts(t *testing.T) {
	b := newBroker(t, nil, broker.Options{})
	res := publish(t, b, "/nobody", "x")
	if res.Delivered != 0 || res.ID.IsZero() {
		t.Fatalf("result %+v: a channel nobody listens to delivers nothing, but records", res)
	}
	if st := b.Stats(); st.Unheard != 1 || st.Channels != 0 || st.HistoryChannels != 1 || st.HistoryBytes != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The first subscriber asking for the whole history gets it.
	zero := store.ID{}
	s := subscribe(t, b, "/nobody", broker.SubscribeOptions{Since: &zero})
	if got := bodies(t, s, 1); !slices.Equal(got, []string{"x"}) || s.Gap() {
		t.Fatalf("history of a channel that never had a subscriber: %q (gap %v)", got, s.Gap())
	}
}

// TestHistoryChannelsBounded: every channel published to records, and the
// histories held are bounded in channels and bytes, the least recently
// published out first; a subscriber resuming on a forgotten channel is
// told of the gap.
func TestHistoryChannelsBounded(t *testing.T) {
	b := newBroker(t, nil, broker.Options{MaxHistoryChannels: 100, MaxHistoryBytes: 1 << 20})
	first := publish(t, b, "/keep", "kept").ID
	for i := range 1000 {
		publish(t, b, "/many/"+strconv.Itoa(i), "x")
		if i%50 == 0 {
			publish(t, b, "/keep", "kept") // recently published: stays
		}
	}
	if st := b.Stats(); st.HistoryChannels > 100 || st.HistoryChannels < 90 {
		t.Fatalf("%d channels held: the cap is 100", st.HistoryChannels)
	}
	s := subscribe(t, b, "/keep", broker.SubscribeOptions{Since: &first})
	if s.Gap() || len(bodies(t, s, 19)) != 19 {
		t.Fatal("the channel published to recently lost its history")
	}
	publish(t, b, "/many/0", "again") // forgotten, then made anew
	back := subscribe(t, b, "/many/0", broker.SubscribeOptions{Since: &first})
	if !back.Gap() {
		t.Fatal("a forgotten channel's history resumed without a gap")
	}
	// Bytes: one large channel pushes the others out, but keeps its own.
	big := strings.Repeat("b", 300<<10)
	for range 3 {
		publish(t, b, "/big", big)
	}
	if st := b.Stats(); st.HistoryBytes > 1<<20 {
		t.Fatalf("%d bytes held: the cap is 1 MiB", st.HistoryBytes)
	}
	publish(t, b, "/big", big)
	if st := b.Stats(); st.HistoryBytes > 1<<20+300<<10 || st.HistoryChannels < 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestChannelForgottenWithLastSubscriber(t *testing.T) {
	b := newBroker(t, nil, broker.Options{})
	a := subscribe(t, b, "/x", broker.SubscribeOptions{})
	c := subscribe(t, b, "/x", broker.SubscribeOptions{})
	a.Close()
	a.Close() // idempotent
	if st := b.Stats(); st.Channels != 1 || st.Subscribers != 1 {
		t.Fatalf("after one left: %+v", st)
	}
	publish(t, b, "/x", "still here")
	if got := string(next(t, c).Body); got != "still here" {
		t.Fatalf("got %q", got)
	}
	c.Close()
	if st := b.Stats(); st.Channels != 0 || st.Subscribers != 0 {
		t.Fatalf("after all left: %+v", st)
	}
	if _, _, err := c.TryNext(); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("TryNext after Close: %v", err)
	}
}

func TestSlowSubscriberDroppedOthersUnaffected(t *testing.T) {
	b := newBroker(t, nil, broker.Options{QueueLen: 8})
	woke := make(chan struct{}, 1)
	slow := subscribe(t, b, "/x", broker.SubscribeOptions{Wake: func() {
		select {
		case woke <- struct{}{}:
		default:
		}
	}})
	fast := subscribe(t, b, "/x", broker.SubscribeOptions{})
	for i := range 20 {
		publish(t, b, "/x", strconv.Itoa(i))
		if got := string(next(t, fast).Body); got != strconv.Itoa(i) {
			t.Fatalf("fast got %q at %d", got, i)
		}
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("slow subscriber not dropped")
	}
	if !errors.Is(slow.Err(), broker.ErrSlow) {
		t.Fatalf("slow Err = %v", slow.Err())
	}
	if _, _, err := slow.TryNext(); !errors.Is(err, broker.ErrSlow) {
		t.Fatalf("TryNext = %v", err)
	}
	<-woke
	// Defect 3 of the original: an evicted subscriber sending an empty
	// frame panicked. Here Deliver just reports false.
	if slow.Deliver(&broker.Message{}) {
		t.Fatal("Deliver on a dropped subscriber succeeded")
	}
	if st := b.Stats(); st.Slow != 1 {
		t.Fatalf("stats %+v", st)
	}
	slow.Close()
	if st := b.Stats(); st.Subscribers != 1 {
		t.Fatalf("stats after close %+v", st)
	}
}

func TestDeliverToOneSubscriber(t *testing.T) {
	b := newBroker(t, nil, broker.Options{})
	a := subscribe(t, b, "/x", broker.SubscribeOptions{})
	c := subscribe(t, b, "/x", broker.SubscribeOptions{})
	if !a.Deliver(&broker.Message{}) {
		t.Fatal("Deliver failed")
	}
	if m := next(t, a); len(m.Body) != 0 {
		t.Fatalf("got %q", m.Body)
	}
	wantNothing(t, c)
}

// TestChurnNeverForgetsLiveChannel is defect 2 of the original: bursts of
// concurrent publishes with subscribers joining and leaving made the hub
// forget a channel whose subscribers were still connected.
func TestChurnNeverForgetsLiveChannel(t *testing.T) {
	const publishers, each = 4, 5000
	b := newBroker(t, nil, broker.Options{QueueLen: 2 * publishers * each})
	const ch = "/busy"
	stable := subscribe(t, b, ch, broker.SubscribeOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	var churn, pubs sync.WaitGroup
	defer func() { cancel(); churn.Wait(); pubs.Wait() }()
	for p := range publishers {
		pubs.Go(func() {
			for range each {
				if _, err := b.Publish(context.Background(), ch, broker.Message{Body: []byte("burst " + strconv.Itoa(p))}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 4 {
		churn.Go(func() {
			for ctx.Err() == nil {
				s, err := b.Subscribe(context.Background(), ch, broker.SubscribeOptions{})
				if err != nil {
					t.Error(err)
					return
				}
				s.TryNext()
				s.Close()
			}
		})
	}
	// Every publish reached the stable subscriber while subscribers
	// joined and left around it.
	for range publishers * each {
		next(t, stable)
	}
	pubs.Wait()
	cancel()
	churn.Wait()
	if stable.Err() != nil {
		t.Fatalf("stable subscriber ended: %v", stable.Err())
	}
	wantNothing(t, stable)
	publish(t, b, ch, "after the storm")
	if got := string(next(t, stable).Body); got != "after the storm" {
		t.Fatalf("got %q", got)
	}
	if st := b.Stats(); st.Channels != 1 || st.Subscribers != 1 {
		t.Fatalf("stats %+v", st)
	}
	stable.Close()
	if st := b.Stats(); st.Channels != 0 || st.Subscribers != 0 {
		t.Fatalf("channel state left behind: %+v", st)
	}
}

func TestHistoryResume(t *testing.T) {
	b := newBroker(t, nil, broker.Options{HistoryLen: 3})
	live := subscribe(t, b, "/h", broker.SubscribeOptions{})
	var ids []store.ID
	for i := range 5 {
		ids = append(ids, publish(t, b, "/h", strconv.Itoa(i)).ID)
	}
	bodies(t, live, 5)
	// Resume after id 2: entries 3 and 4 are kept, no gap.
	s := subscribe(t, b, "/h", broker.SubscribeOptions{Since: &ids[2]})
	if s.Gap() {
		t.Fatal("unexpected gap")
	}
	publish(t, b, "/h", "5")
	if got := bodies(t, s, 3); !slices.Equal(got, []string{"3", "4", "5"}) {
		t.Fatalf("resume got %q", got)
	}
	// Resume after id 0: entry 1 was trimmed: gap, then what is kept.
	s = subscribe(t, b, "/h", broker.SubscribeOptions{Since: &ids[0]})
	if !s.Gap() {
		t.Fatal("trimmed entries not reported as a gap")
	}
	if got := bodies(t, s, 3); !slices.Equal(got, []string{"3", "4", "5"}) {
		t.Fatalf("resume got %q", got)
	}
	// The zero id asks for the whole history.
	zero := store.ID{}
	s = subscribe(t, b, "/h", broker.SubscribeOptions{Since: &zero})
	if got := bodies(t, s, 3); !slices.Equal(got, []string{"3", "4", "5"}) {
		t.Fatalf("whole history got %q", got)
	}
}

func TestHistoryKeptAfterLastSubscriberLeft(t *testing.T) {
	b := newBroker(t, nil, broker.Options{})
	s := subscribe(t, b, "/r", broker.SubscribeOptions{})
	last := publish(t, b, "/r", "seen").ID
	next(t, s)
	s.Close()
	// Nobody listens, but the channel was live within the TTL: messages
	// are recorded for the subscriber that comes back.
	publish(t, b, "/r", "missed 1")
	publish(t, b, "/r", "missed 2")
	back := subscribe(t, b, "/r", broker.SubscribeOptions{Since: &last})
	if back.Gap() {
		t.Fatal("gap")
	}
	if got := bodies(t, back, 2); !slices.Equal(got, []string{"missed 1", "missed 2"}) {
		t.Fatalf("got %q", got)
	}
}

func TestHistoryTTL(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	b := newBroker(t, nil, broker.Options{HistoryTTL: time.Minute, Now: clock})
	s := subscribe(t, b, "/ttl", broker.SubscribeOptions{})
	first := publish(t, b, "/ttl", "a").ID
	publish(t, b, "/ttl", "b")
	s.Close()
	advance(2 * time.Minute)
	// Expired entries are gone and reported as a gap; what came after is
	// there.
	publish(t, b, "/ttl", "c")
	back := subscribe(t, b, "/ttl", broker.SubscribeOptions{Since: &first})
	if !back.Gap() {
		t.Fatal("expired entries not reported as a gap")
	}
	if got := bodies(t, back, 1); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("after expiry: %q", got)
	}
}

func TestHistoryOff(t *testing.T) {
	b := newBroker(t, nil, broker.Options{HistoryLen: -1})
	s := subscribe(t, b, "/o", broker.SubscribeOptions{})
	if res := publish(t, b, "/o", "x"); !res.ID.IsZero() || res.Delivered != 1 {
		t.Fatalf("result %+v", res)
	}
	next(t, s)
	id := store.ID{MS: 1}
	r := subscribe(t, b, "/o", broker.SubscribeOptions{Since: &id})
	if !r.Gap() {
		t.Fatal("no history, but no gap reported")
	}
	if st := b.Stats(); st.History != "off" {
		t.Fatalf("stats %+v", st)
	}
}

// TestResumeWhilePublishing checks that a subscriber joining with a
// cursor during a stream of publishes sees every message after the cursor
// exactly once, in order: history and live deliveries are stitched
// together without a duplicate or a hole.
func TestResumeWhilePublishing(t *testing.T) {
	b := newBroker(t, nil, broker.Options{HistoryLen: 10000, QueueLen: 4096})
	keep := subscribe(t, b, "/s", broker.SubscribeOptions{})
	first := publish(t, b, "/s", "0").ID
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i < 2000; i++ {
			b.Publish(context.Background(), "/s", broker.Message{Body: []byte(strconv.Itoa(i))})
		}
	}()
	s := subscribe(t, b, "/s", broker.SubscribeOptions{Since: &first})
	<-done
	for i := 1; i < 2000; i++ {
		if got := string(next(t, s).Body); got != strconv.Itoa(i) {
			t.Fatalf("message %d: got %q", i, got)
		}
	}
	wantNothing(t, s)
	_ = keep
}

func TestShutdown(t *testing.T) {
	b := newBroker(t, nil, broker.Options{})
	s := subscribe(t, b, "/x", broker.SubscribeOptions{})
	b.Shutdown(context.Background())
	b.Shutdown(context.Background())
	<-s.Done()
	if !errors.Is(s.Err(), broker.ErrShuttingDown) {
		t.Fatalf("Err = %v", s.Err())
	}
	if _, err := b.Subscribe(context.Background(), "/x", broker.SubscribeOptions{}); !errors.Is(err, broker.ErrShuttingDown) {
		t.Fatalf("Subscribe after shutdown: %v", err)
	}
	if _, err := b.Publish(context.Background(), "/x", broker.Message{Body: []byte("x")}); !errors.Is(err, broker.ErrShuttingDown) {
		t.Fatalf("Publish after shutdown: %v", err)
	}
}

func TestWaitForSubscribers(t *testing.T) {
	b := newBroker(t, nil, broker.Options{})
	joined := make(chan *broker.Subscription)
	go func() {
		s, _ := b.Subscribe(context.Background(), "/w", broker.SubscribeOptions{})
		joined <- s
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.WaitForSubscribers(ctx, "/w", 1); err != nil {
		t.Fatal(err)
	}
	s := <-joined
	s.Close()
	if err := b.WaitForSubscribers(ctx, "/w", 0); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := b.WaitForSubscribers(short, "/w", 5); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

// bus is an in-process store.Fanout shared by several brokers, standing
// for the nodes of a cluster: it delivers every payload to every
// subscriber of its topic in one global order, as Redis pub/sub does.
type bus struct {
	mu     sync.Mutex
	subs   map[string]map[int]func([]byte)
	nextID int
	fail   error
}

type fanStore struct {
	*memstore.Store
	bus *bus
}

func (f *fanStore) Publish(ctx context.Context, topic string, payload []byte) error {
	f.bus.mu.Lock()
	defer f.bus.mu.Unlock()
	if f.bus.fail != nil {
		return f.bus.fail
	}
	for _, fn := range f.bus.subs[topic] {
		fn(slices.Clone(payload))
	}
	return nil
}

func (f *fanStore) Subscribe(ctx context.Context, topic string, fn func([]byte)) (func(), error) {
	f.bus.mu.Lock()
	defer f.bus.mu.Unlock()
	if f.bus.fail != nil {
		return nil, f.bus.fail
	}
	if f.bus.subs[topic] == nil {
		f.bus.subs[topic] = make(map[int]func([]byte))
	}
	id := f.bus.nextID
	f.bus.nextID++
	f.bus.subs[topic][id] = fn
	return func() {
		f.bus.mu.Lock()
		defer f.bus.mu.Unlock()
		delete(f.bus.subs[topic], id)
		if len(f.bus.subs[topic]) == 0 {
			delete(f.bus.subs, topic)
		}
	}, nil
}

func (f *fanStore) topics() int {
	f.bus.mu.Lock()
	defer f.bus.mu.Unlock()
	return len(f.bus.subs)
}

var _ store.Fanout = (*fanStore)(nil)

func TestFanoutAcrossNodesOneOrder(t *testing.T) {
	shared := memstore.New(memstore.Options{})
	defer shared.Close()
	bs := &bus{subs: map[string]map[int]func([]byte){}}
	stA, stB := &fanStore{shared, bs}, &fanStore{shared, bs}
	a := newBroker(t, stA, broker.Options{QueueLen: 1024})
	b := newBroker(t, stB, broker.Options{QueueLen: 1024})
	if st := a.Stats(); !st.Fanout || st.History != "engine" {
		t.Fatalf("stats %+v", st)
	}
	subsA := []*broker.Subscription{subscribe(t, a, "/f", broker.SubscribeOptions{}), subscribe(t, a, "/f", broker.SubscribeOptions{})}
	subsB := []*broker.Subscription{subscribe(t, b, "/f", broker.SubscribeOptions{})}
	// Publishers on both nodes at once.
	var wg sync.WaitGroup
	const each = 200
	for n, br := range []*broker.Broker{a, b} {
		wg.Go(func() {
			for i := range each {
				if res, err := br.Publish(context.Background(), "/f", broker.Message{Body: []byte(fmt.Sprintf("%d-%d", n, i))}); err != nil || res.Delivered != -1 {
					t.Errorf("publish: %+v %v", res, err)
				}
			}
		})
	}
	wg.Wait()
	var ref []string
	for i, s := range slices.Concat(subsA, subsB) {
		got := bodies(t, s, 2*each)
		if i == 0 {
			ref = got
			continue
		}
		if !slices.Equal(got, ref) {
			t.Fatalf("subscriber %d saw another order", i)
		}
	}
	// Resume through the engine's shared history works on the other node.
	s := subscribe(t, b, "/g", broker.SubscribeOptions{})
	id := publish(t, a, "/g", "one").ID
	publish(t, a, "/g", "two")
	bodies(t, s, 2)
	r := subscribe(t, b, "/g", broker.SubscribeOptions{Since: &id})
	if got := string(next(t, r).Body); got != "two" {
		t.Fatalf("resume on the other node got %q", got)
	}
	// Leaving ends the fan-out subscriptions.
	for _, s := range slices.Concat(subsA, subsB) {
		s.Close()
	}
	s.Close()
	r.Close()
	if n := stA.topics(); n != 0 {
		t.Fatalf("%d fan-out topics still subscribed", n)
	}
}

func TestFanoutFailure(t *testing.T) {
	shared := memstore.New(memstore.Options{})
	defer shared.Close()
	down := errors.New("redis down")
	bs := &bus{subs: map[string]map[int]func([]byte){}, fail: down}
	b := newBroker(t, &fanStore{shared, bs}, broker.Options{})
	if _, err := b.Subscribe(context.Background(), "/x", broker.SubscribeOptions{}); !errors.Is(err, down) {
		t.Fatalf("Subscribe: %v", err)
	}
	if st := b.Stats(); st.Channels != 0 {
		t.Fatalf("failed subscribe left a channel: %+v", st)
	}
	if _, err := b.Publish(context.Background(), "/x", broker.Message{Body: []byte("x")}); !errors.Is(err, down) {
		t.Fatalf("Publish: %v", err)
	}
}

func BenchmarkFanout1000(b *testing.B) {
	br, _ := broker.New(nil, broker.Options{HistoryLen: -1}, capability.Deps{})
	defer br.Shutdown(context.Background())
	subs := make([]*broker.Subscription, 1000)
	for i := range subs {
		subs[i], _ = br.Subscribe(context.Background(), "/bench", broker.SubscribeOptions{})
	}
	msg := broker.Message{Body: []byte("hello")}
	b.ReportAllocs()
	for b.Loop() {
		br.Publish(context.Background(), "/bench", msg)
		for _, s := range subs {
			s.TryNext()
		}
	}
}

// TestWireFormMadeOnce: the subscribers of a publish share one message, and
// a wire form of it is made once and shared, on a fan-out engine too.
// Messages that are not shared (a replay) make it each time.
func TestWireFormMadeOnce(t *testing.T) {
	shared := memstore.New(memstore.Options{})
	defer shared.Close()
	bs := &bus{subs: map[string]map[int]func([]byte){}}
	for name, st := range map[string]store.Engine{"local": nil, "fan-out": &fanStore{shared, bs}} {
		t.Run(name, func(t *testing.T) {
			b := newBroker(t, st, broker.Options{})
			subs := make([]*broker.Subscription, 8)
			for i := range subs {
				subs[i] = subscribe(t, b, "/wire", broker.SubscribeOptions{})
			}
			publish(t, b, "/wire", "hello")
			var made atomic.Int64
			encode := func(m *broker.Message) []byte {
				made.Add(1)
				return []byte("<" + string(m.Body) + ">")
			}
			msgs := make([]*broker.Message, len(subs))
			for i, s := range subs {
				msgs[i] = next(t, s)
			}
			// Subscribers racing for the first encoding may each make it,
			// but all get the one that was kept.
			forms := make([][]byte, len(subs))
			var wg sync.WaitGroup
			for i, m := range msgs {
				wg.Go(func() { forms[i] = m.Wire(0, encode) })
			}
			wg.Wait()
			for i, f := range forms {
				if string(f) != "<hello>" || &f[0] != &forms[0][0] {
					t.Fatalf("subscriber %d: form %q, not the shared one", i, f)
				}
			}
			made.Store(0)
			for _, m := range msgs {
				m.Wire(0, encode)
			}
			if n := made.Load(); n != 0 {
				t.Fatalf("form made again %d times", n)
			}
			// Another form is made once too.
			for _, m := range msgs {
				if f := m.Wire(1, func(m *broker.Message) []byte { made.Add(1); return []byte("[" + string(m.Body) + "]") }); string(f) != "[hello]" {
					t.Fatalf("form 1 %q", f)
				}
			}
			if n := made.Load(); n != 1 {
				t.Fatalf("form 1 made %d times", n)
			}
			// A replayed message is the subscriber's own.
			made.Store(0)
			zero := store.ID{}
			r := subscribe(t, b, "/wire", broker.SubscribeOptions{Since: &zero})
			m := next(t, r)
			m.Wire(0, encode)
			m.Wire(0, encode)
			if string(m.Body) != "hello" || made.Load() != 2 {
				t.Fatalf("replay %q encoded %d times", m.Body, made.Load())
			}
		})
	}
}

// BenchmarkPublishHistory publishes from every processor to 64 channels,
// history on: "unheard", channels nobody listens to (a single node now
// records them too); "heard", each with a subscriber that drains it.
func BenchmarkPublishHistory(b *testing.B) {
	for _, heard := range []bool{false, true} {
		name := "unheard"
		if heard {
			name = "heard"
		}
		b.Run(name, func(b *testing.B) {
			br, _ := broker.New(nil, broker.Options{}, capability.Deps{})
			defer br.Shutdown(context.Background())
			const channels = 64
			var drained sync.WaitGroup
			if heard {
				for i := range channels {
					s, _ := br.Subscribe(context.Background(), "/bench/"+strconv.Itoa(i), broker.SubscribeOptions{})
					drained.Go(func() {
						for {
							if _, err := s.Next(context.Background()); err != nil {
								return
							}
						}
					})
				}
			}
			msg := broker.Message{Body: []byte("hello")}
			var next atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(1))
				for pb.Next() {
					i++
					br.Publish(context.Background(), "/bench/"+strconv.Itoa(i%channels), msg)
				}
			})
			b.StopTimer()
			br.Shutdown(context.Background())
			drained.Wait()
		})
	}
}
