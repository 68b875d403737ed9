package filestore_test

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
)

// benchBody is a 200-byte body of random hex, which compresses little.
func benchBody() []byte {
	b := make([]byte, 200)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = "0123456789abcdef"[rng.IntN(16)]
	}
	return b
}

// parallel runs n operations from 32 goroutines, each on its own queue.
func parallel(n int, op func(key string) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := range 32 {
		key := "t/bench-" + strconv.Itoa(w)
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := op(key); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// BenchmarkDurable measures the engine's write pattern: 32 writers making
// durable appends, then durable consumes of the same messages (a take
// under a lease and its settling as delivered), sharing syncs. It reports
// the operations each log record (one sync) carried, and where the
// platform tells, the process's CPU time per operation (a sync costs tens
// of microseconds of it on a virtual machine).
//
//	go test -run XXX -bench Durable -benchtime 100000x ./internal/store/filestore
func BenchmarkDurable(b *testing.B) {
	ctx := context.Background()
	body := benchBody()
	s, err := filestore.Open(filestore.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	appended := 0
	b.Run("append", func(b *testing.B) {
		defer measure(b, s)()
		err := parallel(b.N, func(key string) error {
			_, err := s.Append(ctx, key, store.Message{Body: body}, store.AppendOptions{})
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		appended += b.N
	})
	b.Run("take", func(b *testing.B) {
		if b.N > appended {
			b.Skip("run with -benchtime Nx so that take follows append")
		}
		defer measure(b, s)()
		err := parallel(b.N, func(key string) error {
			_, _, err := takeNow(s, key, store.TakeDelete)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	})
}

// measure reports operations per log record and CPU time per operation
// for the benchmark b on s, from the call to the call of the function it
// returns.
func measure(b *testing.B, s *filestore.Store) func() {
	recs, cpu := s.Records(), cpuTime()
	return func() {
		if n := s.Records() - recs; n > 0 {
			b.ReportMetric(float64(b.N)/float64(n), "ops/record")
		}
		if cpu > 0 {
			b.ReportMetric(float64(cpuTime()-cpu)/float64(time.Microsecond)/float64(b.N), "cpu-us/op")
		}
	}
}

// BenchmarkReopen fills a store with POSTERN_BENCH_MESSAGES (default one
// million) 200-byte messages over 32 queues, closes it, and measures the
// bytes on disk and the time to open it again.
//
//	go test -run XXX -bench Reopen -benchtime 3x ./internal/store/filestore
func BenchmarkReopen(b *testing.B) {
	ctx := context.Background()
	n := 1_000_000
	if v := os.Getenv("POSTERN_BENCH_MESSAGES"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	dir := b.TempDir()
	s, err := filestore.Open(filestore.Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	body := benchBody()
	start := time.Now()
	if err := parallel(n, func(key string) error {
		_, err := s.Append(ctx, key, store.Message{Body: body}, store.AppendOptions{})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	fill := time.Since(start)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	var size int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
		}
		return nil
	})
	b.ResetTimer()
	for b.Loop() {
		s, err := filestore.Open(filestore.Options{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		if st := s.QueueStats(); st.Messages != n {
			b.Fatal(fmt.Sprintf("reopened with %d messages, want %d", st.Messages, n))
		}
		s.Close()
	}
	b.ReportMetric(float64(size)/(1<<20), "MB-on-disk")
	b.ReportMetric(float64(n)/fill.Seconds(), "fill-msgs/s")
}
