package queue_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
)

// BenchmarkAppendTake measures one append plus one consume (a take and
// its settling) through the core on the memory engine, from parallel
// goroutines on separate keys.
func BenchmarkAppendTake(b *testing.B) {
	c := newCore(b)
	ctx := context.Background()
	var next atomic.Int64
	body := msg("0123456789abcdef0123456789abcdef")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		key := "t/bench-" + strconv.FormatInt(next.Add(1), 10)
		for pb.Next() {
			if _, err := c.Append(ctx, key, body, store.AppendOptions{MaxLen: 1000}); err != nil {
				b.Fatal(err)
			}
			d, ok, err := c.Take(ctx, key, store.TakeDelete, 0)
			if !ok || err != nil {
				b.Fatal("take", ok, err)
			}
			if err := d.Settle(ctx, true); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkWake measures the time from an append to the return of a take
// that was already waiting for it.
func BenchmarkWake(b *testing.B) {
	c := newCore(b)
	ctx := context.Background()
	got := make(chan struct{})
	go func() {
		for {
			d, ok, err := c.Take(ctx, "t/wake", store.TakeDelete, time.Minute)
			if err != nil || !ok || d.Settle(ctx, true) != nil {
				close(got)
				return
			}
			got <- struct{}{}
		}
	}()
	b.ResetTimer()
	for range b.N {
		if err := c.WaitForWaiters(ctx, 1); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Append(ctx, "t/wake", msg("x"), store.AppendOptions{}); err != nil {
			b.Fatal(err)
		}
		<-got
	}
	b.StopTimer()
	c.Shutdown(ctx)
	<-got
}
