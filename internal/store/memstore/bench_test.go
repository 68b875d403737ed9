package memstore_test

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/memstore"
)

var benchBody = []byte("0123456789abcdef0123456789abcdef")

// parallelKeys runs op from parallel goroutines, each on a key of its own
// (shared: every goroutine on one key).
func parallelKeys(b *testing.B, shared bool, op func(s *memstore.Store, key string) error) {
	s := memstore.New(memstore.Options{SweepInterval: -1})
	defer s.Close()
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		key := "t/bench"
		if !shared {
			key += strconv.FormatInt(next.Add(1), 10)
		}
		for pb.Next() {
			if err := op(s, key); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkAppendTake is one append and one consume (a take and its
// settling as delivered), on keys of their own and on one shared key.
func BenchmarkAppendTake(b *testing.B) {
	ctx := context.Background()
	op := func(s *memstore.Store, key string) error {
		if _, err := s.Append(ctx, key, store.Message{Body: benchBody}, store.AppendOptions{MaxLen: 1000}); err != nil {
			return err
		}
		l, _, err := s.Take(ctx, key, store.TakeDelete, time.Minute)
		if err != nil {
			return err
		}
		return s.Settle(ctx, key, []store.Lease{l}, true)
	}
	b.Run("own", func(b *testing.B) { parallelKeys(b, false, op) })
	b.Run("shared", func(b *testing.B) { parallelKeys(b, true, op) })
}

// BenchmarkPendingAck is an append, a pending take and its ack.
func BenchmarkPendingAck(b *testing.B) {
	ctx := context.Background()
	parallelKeys(b, false, func(s *memstore.Store, key string) error {
		if _, err := s.Append(ctx, key, store.Message{Body: benchBody}, store.AppendOptions{}); err != nil {
			return err
		}
		l, _, err := s.Take(ctx, key, store.TakePending, time.Minute)
		if err == nil {
			err = s.Settle(ctx, key, []store.Lease{l}, true)
		}
		if err != nil {
			return err
		}
		_, err = s.Ack(ctx, key, l.ID)
		return err
	})
}

// BenchmarkDedupTakeAll is an inbox's pattern: appends with dedup keys,
// then a TakeAll.
func BenchmarkDedupTakeAll(b *testing.B) {
	ctx := context.Background()
	var n atomic.Int64
	parallelKeys(b, false, func(s *memstore.Store, key string) error {
		for range 4 {
			k := strconv.FormatInt(n.Add(1), 10)
			opts := store.AppendOptions{TTL: time.Hour, DedupKey: k, DedupWindow: time.Hour}
			if _, err := s.Append(ctx, key, store.Message{Body: benchBody}, opts); err != nil {
				return err
			}
		}
		ls, err := s.TakeAll(ctx, key, 0, time.Minute)
		if err != nil {
			return err
		}
		return s.Settle(ctx, key, ls, true)
	})
}

// BenchmarkRecord is a channel's history: Record, and Since now and then.
func BenchmarkRecord(b *testing.B) {
	ctx := context.Background()
	var n atomic.Int64
	parallelKeys(b, false, func(s *memstore.Store, key string) error {
		if _, err := s.Record(ctx, key, store.Message{Body: benchBody}, 100, time.Minute); err != nil {
			return err
		}
		if n.Add(1)%16 == 0 {
			_, _, err := s.Since(ctx, key, store.ID{}, 0)
			return err
		}
		return nil
	})
}

// BenchmarkAppendKeep appends messages of 128 bytes, each in a buffer of
// its own as a produce reads it, to eight keys and takes none: the heap
// grows as it does under a produce load, and the figure includes the
// collector's work and the fresh pages that what a message keeps costs.
// kept-B/msg is the heap in use per message kept.
func BenchmarkAppendKeep(b *testing.B) {
	ctx := context.Background()
	s := memstore.New(memstore.Options{SweepInterval: -1})
	defer s.Close()
	keys := make([]string, 8)
	for i := range keys {
		keys[i] = "t/load-" + strconv.Itoa(i)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		body := make([]byte, 128)
		m := store.Message{ContentType: "text/plain", Body: body}
		if _, err := s.Append(ctx, keys[i%len(keys)], m, store.AppendOptions{MaxLen: 100_000_000}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(b.N), "kept-B/msg")
}
