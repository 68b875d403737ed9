package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newCore(t testing.TB) *queue.Core {
	t.Helper()
	st := memstore.New(memstore.Options{SweepInterval: -1})
	c, err := queue.New(st, queue.Options{}, capability.Deps{Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Shutdown(context.Background())
		st.Close()
	})
	return c
}

func msg(s string) store.Message { return store.Message{Body: []byte(s)} }

func TestTakeWaitsForAppend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		ctx := context.Background()
		type result struct {
			m   store.Message
			ok  bool
			err error
		}
		got := make(chan result, 1)
		start := time.Now()
		go func() {
			d, ok, err := c.Take(ctx, "t/x", store.TakeDelete, time.Minute)
			got <- result{d.Message, ok, err}
		}()
		synctest.Wait() // the taker is now parked on its wait
		if n := c.Waiting(); n != 1 {
			t.Fatalf("Waiting() = %d, want 1", n)
		}
		time.Sleep(10 * time.Second) // fake time: the taker keeps waiting
		if _, err := c.Append(ctx, "t/x", msg("hello"), store.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.err != nil || !r.ok || string(r.m.Body) != "hello" {
			t.Fatalf("Take = %q %v %v", r.m.Body, r.ok, r.err)
		}
		// Woken by the append itself: no fake time passed after it.
		if d := time.Since(start); d != 10*time.Second {
			t.Fatalf("woke after %v, want exactly 10s", d)
		}
		if n := c.Waiting(); n != 0 {
			t.Fatalf("Waiting() after wake = %d", n)
		}
	})
}

func TestTakeTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		start := time.Now()
		_, ok, err := c.Take(context.Background(), "t/x", store.TakePending, 30*time.Second)
		if ok || err != nil {
			t.Fatalf("Take on empty = %v %v", ok, err)
		}
		if d := time.Since(start); d != 30*time.Second {
			t.Fatalf("waited %v, want 30s", d)
		}
	})
}

func TestZeroWaitDoesNotBlock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		start := time.Now()
		if _, ok, err := c.Take(context.Background(), "t/x", store.TakeDelete, 0); ok || err != nil {
			t.Fatalf("Take = %v %v", ok, err)
		}
		if _, ok, err := c.TakeReply(context.Background(), "t/x", store.ID{MS: 1}, -time.Second); ok || err != nil {
			t.Fatalf("TakeReply = %v %v", ok, err)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("zero wait took %v", d)
		}
	})
}

func TestOtherKeysDoNotWake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		ctx := context.Background()
		done := make(chan bool, 1)
		go func() {
			_, ok, _ := c.Take(ctx, "t/a", store.TakeDelete, time.Minute)
			done <- ok
		}()
		synctest.Wait()
		c.Append(ctx, "t/b", msg("for b"), store.AppendOptions{})
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("waiter on t/a returned after an append to t/b")
		default:
		}
		c.Append(ctx, "t/a", msg("for a"), store.AppendOptions{})
		if !<-done {
			t.Fatal("waiter on t/a got nothing")
		}
		if n, _ := c.Len(ctx, "t/b"); n != 1 {
			t.Fatalf("t/b length %d", n)
		}
	})
}

func TestManyWaitersEachGetOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		ctx := context.Background()
		const n = 10
		got := make(chan string, n)
		for range n {
			go func() {
				m, ok, _ := c.Take(ctx, "t/x", store.TakeDelete, time.Minute)
				if ok {
					got <- string(m.Body)
				} else {
					got <- ""
				}
			}()
		}
		synctest.Wait()
		for i := range n {
			c.Append(ctx, "t/x", msg(string(rune('a'+i))), store.AppendOptions{})
		}
		seen := map[string]bool{}
		for range n {
			s := <-got
			if s == "" || seen[s] {
				t.Fatalf("waiter got %q (seen: %v)", s, seen)
			}
			seen[s] = true
		}
	})
}

func TestReplyWakesWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		ctx := context.Background()
		r, _ := c.Append(ctx, "t/x", msg("q"), store.AppendOptions{})
		if d, ok, _ := c.Take(ctx, "t/x", store.TakePending, 0); !ok || d.Settle(ctx, true) != nil {
			t.Fatal("no pending message")
		}
		got := make(chan string, 1)
		go func() {
			m, _, _ := c.TakeReply(ctx, "t/x", r.ID, time.Minute)
			got <- string(m.Body)
		}()
		synctest.Wait()
		if ok, err := c.Reply(ctx, "t/x", r.ID, msg("answer"), time.Hour); !ok || err != nil {
			t.Fatalf("Reply = %v %v", ok, err)
		}
		if s := <-got; s != "answer" {
			t.Fatalf("reply waiter got %q", s)
		}
	})
}

func TestCanceledTakerIsNotHandedAMessage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, _, err := c.Take(ctx, "t/x", store.TakeDelete, time.Minute)
			errc <- err
		}()
		synctest.Wait()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Take after cancel: %v", err)
		}
		c.Append(context.Background(), "t/x", msg("kept"), store.AppendOptions{})
		if n, _ := c.Len(context.Background(), "t/x"); n != 1 {
			t.Fatalf("message lost: len %d", n)
		}
	})
}

func TestShutdownEndsWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		ctx := context.Background()
		errc := make(chan error, 2)
		go func() { _, _, err := c.Take(ctx, "t/x", store.TakeDelete, time.Hour); errc <- err }()
		go func() { _, _, err := c.TakeReply(ctx, "t/x", store.ID{MS: 1}, time.Hour); errc <- err }()
		synctest.Wait()
		c.Shutdown(ctx)
		c.Shutdown(ctx) // idempotent
		for range 2 {
			if err := <-errc; !errors.Is(err, queue.ErrShuttingDown) {
				t.Fatalf("wait after shutdown: %v", err)
			}
		}
		// Later waits return at once.
		start := time.Now()
		c.Take(ctx, "t/y", store.TakeDelete, time.Hour)
		if time.Since(start) != 0 {
			t.Fatal("wait after shutdown blocked")
		}
	})
}

// TestUndeliveredWakesWaiter: a message whose answer failed is back at
// once for a waiting consumer.
func TestUndeliveredWakesWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		ctx := context.Background()
		c.Append(ctx, "t/x", msg("m"), store.AppendOptions{})
		d, _, _ := c.Take(ctx, "t/x", store.TakeDelete, 0)
		got := make(chan string, 1)
		go func() {
			d, _, _ := c.Take(ctx, "t/x", store.TakeDelete, time.Minute)
			got <- string(d.Body)
		}()
		synctest.Wait()
		if err := d.Settle(ctx, false); err != nil {
			t.Fatal(err)
		}
		if s := <-got; s != "m" {
			t.Fatalf("got %q after a failed delivery", s)
		}
	})
}

// TestUnsettledComesBack: a message whose consumer never settled (its
// node died, its answer was lost) is handed out again once its lease runs
// out, and not before.
func TestUnsettledComesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCore(t)
		ctx := context.Background()
		c.Append(ctx, "t/x", msg("m"), store.AppendOptions{})
		d, ok, _ := c.Take(ctx, "t/x", store.TakeDelete, 0)
		if !ok || d.Deadline.Sub(time.Now()) != queue.DefaultLease {
			t.Fatalf("took %v, deadline in %v", ok, d.Deadline.Sub(time.Now()))
		}
		if _, ok, _ := c.Take(ctx, "t/x", store.TakeDelete, 0); ok {
			t.Fatal("a message under a lease was handed out twice")
		}
		time.Sleep(queue.DefaultLease)
		again, ok, _ := c.Take(ctx, "t/x", store.TakeDelete, 0)
		if !ok || again.ID != d.ID {
			t.Fatal("the message did not come back when its lease ran out")
		}
		if err := again.Settle(ctx, true); err != nil {
			t.Fatal(err)
		}
		if err := d.Settle(ctx, true); err != nil { // the first one, late: nothing to do
			t.Fatal(err)
		}
		if n, _ := c.Len(ctx, "t/x"); n != 0 {
			t.Fatalf("len %d after delivery", n)
		}
	})
}

// flaky is the memory engine whose settles fail with ErrUnavailable while
// fails is above zero.
type flaky struct {
	store.Engine
	fails atomic.Int64
}

func (f *flaky) Settle(ctx context.Context, key string, ls []store.Lease, delivered bool) error {
	if f.fails.Add(-1) >= 0 {
		return fmt.Errorf("%w: disk on fire", store.ErrUnavailable)
	}
	return f.Engine.Settle(ctx, key, ls, delivered)
}

// TestSettleOutlastsAnOutage: settling tries again while the engine is
// unavailable, until the lease runs out; within it, a short outage costs
// no redelivery, beyond it the failure is reported and counted.
func TestSettleOutlastsAnOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		st := &flaky{Engine: memstore.New(memstore.Options{SweepInterval: -1})}
		defer st.Close()
		c, err := queue.New(st, queue.Options{Lease: 2 * time.Second}, capability.Deps{Registry: reg})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Shutdown(context.Background())
		ctx := context.Background()
		c.Append(ctx, "t/x", msg("a"), store.AppendOptions{})
		c.Append(ctx, "t/x", msg("b"), store.AppendOptions{})
		d, _, _ := c.Take(ctx, "t/x", store.TakeDelete, 0)
		st.fails.Store(5)
		if err := d.Settle(ctx, true); err != nil {
			t.Fatalf("Settle through a short outage: %v", err)
		}
		if n, _ := c.Len(ctx, "t/x"); n != 1 {
			t.Fatalf("len %d, want 1", n)
		}
		d, _, _ = c.Take(ctx, "t/x", store.TakeDelete, 0)
		st.fails.Store(1 << 30)
		start := time.Now()
		if err := d.Settle(ctx, true); !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("Settle through a long outage: %v", err)
		}
		if waited := time.Since(start); waited > 2*time.Second || waited < time.Second {
			t.Fatalf("gave up after %v, want about the lease", waited)
		}
		st.fails.Store(0)
		time.Sleep(2 * time.Second)
		if again, ok, _ := c.Take(ctx, "t/x", store.TakeDelete, 0); !ok || again.ID != d.ID {
			t.Fatal("an unsettled message did not come back")
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "postern_queue_unsettled_total" && mf.GetMetric()[0].GetCounter().GetValue() != 1 {
				t.Fatalf("postern_queue_unsettled_total = %v", mf.GetMetric()[0].GetCounter().GetValue())
			}
		}
	})
}

// TestWakeIsTimed: a long-poll woken by an append is counted in
// postern_queue_wake_seconds; one that finds its message at once is not.
func TestWakeIsTimed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		st := memstore.New(memstore.Options{SweepInterval: -1})
		defer st.Close()
		c, err := queue.New(st, queue.Options{}, capability.Deps{Registry: reg})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Shutdown(context.Background())
		ctx := context.Background()
		done := make(chan struct{})
		go func() {
			c.Take(ctx, "t/x", store.TakeDelete, time.Minute)
			close(done)
		}()
		synctest.Wait()
		c.Append(ctx, "t/x", msg("woken"), store.AppendOptions{})
		<-done
		c.Append(ctx, "t/x", msg("there already"), store.AppendOptions{})
		c.Take(ctx, "t/x", store.TakeDelete, time.Minute)

		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var count uint64
		for _, mf := range mfs {
			if mf.GetName() == "postern_queue_wake_seconds" {
				for _, m := range mf.GetMetric() {
					count += m.GetHistogram().GetSampleCount()
				}
			}
		}
		if count != 1 {
			t.Fatalf("postern_queue_wake_seconds counted %d wakes, want 1", count)
		}
	})
}
