package filestore_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
)

// The writer of a batch gathers the operations on their way into it before
// sealing it (Options.GatherDelay). These tests run in a synctest bubble:
// its clock moves only when every goroutine in it waits, so a wait for a
// joiner shows as elapsed time exactly when the writer timed out.

// openGather opens a store in a new directory with Options.GatherDelay d.
func openGather(t *testing.T, d time.Duration) *filestore.Store {
	t.Helper()
	s, err := filestore.Open(filestore.Options{Dir: t.TempDir(), GatherDelay: d})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func appendOne(t *testing.T, s *filestore.Store, key string) {
	t.Helper()
	if _, err := s.Append(context.Background(), key, store.Message{Body: []byte("x")}, store.AppendOptions{}); err != nil {
		t.Errorf("Append(%s): %v", key, err)
	}
}

// besideStuckAppend appends to s while another append is held on its way
// into the batch (filestore.PauseNextWrite). It returns how long that
// append took and the log records written by then, and, after letting
// the held append finish, the records written in all.
func besideStuckAppend(t *testing.T, s *filestore.Store) (waited time.Duration, records, total uint64) {
	t.Helper()
	before := s.Records()
	paused, release := filestore.PauseNextWrite()
	var late sync.WaitGroup
	late.Go(func() { appendOne(t, s, "t/late") })
	<-paused
	start := time.Now()
	appendOne(t, s, "t/first")
	waited, records = time.Since(start), s.Records()-before
	release()
	late.Wait()
	return waited, records, s.Records() - before
}

// TestGatherWaitsForOperationsOnTheirWay: an append that began before its
// batch's writer sealed the batch joins it, and both share one record.
func TestGatherWaitsForOperationsOnTheirWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := openGather(t, time.Second)
		defer s.Close()
		records := s.Records()
		paused, release := filestore.PauseNextWrite()
		var wg sync.WaitGroup
		wg.Go(func() { appendOne(t, s, "t/late") })
		<-paused
		start := time.Now()
		wg.Go(func() { appendOne(t, s, "t/first") })
		synctest.Wait() // the first append's writer waits for the late one
		release()
		wg.Wait()
		if got := s.Records() - records; got != 1 {
			t.Errorf("two appends made %d log records, want 1 shared", got)
		}
		if waited := time.Since(start); waited != 0 {
			t.Errorf("the appends waited %v for the timeout, want no wait beyond the late one's arrival", waited)
		}
		if n := s.QueueStats().Messages; n != 2 {
			t.Errorf("%d messages stored, want 2", n)
		}
	})
}

// TestGatherWaitsNoLongerThanTheDelay: an operation stuck on its way in
// holds a batch back for GatherDelay at most, then goes into a record of
// its own.
func TestGatherWaitsNoLongerThanTheDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const delay = 300 * time.Microsecond
		s := openGather(t, delay)
		defer s.Close()
		waited, records, total := besideStuckAppend(t, s)
		if waited != delay {
			t.Errorf("the append waited %v for the stuck one, want GatherDelay %v", waited, delay)
		}
		if records != 1 {
			t.Errorf("%d log records before the stuck append went on, want 1", records)
		}
		if total != 2 {
			t.Errorf("%d log records in all, want 2", total)
		}
	})
}

// TestGatherLoneAppendNotDelayed: with nothing else on its way, an append
// is written at once, whatever GatherDelay is; a negative GatherDelay
// seals every batch at once even with an operation on its way.
func TestGatherLoneAppendNotDelayed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := openGather(t, time.Hour)
		defer s.Close()
		start := time.Now()
		appendOne(t, s, "t/alone")
		if waited := time.Since(start); waited != 0 {
			t.Errorf("a lone append waited %v, want 0", waited)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		s := openGather(t, -1)
		defer s.Close()
		waited, records, _ := besideStuckAppend(t, s)
		if waited != 0 {
			t.Errorf("with GatherDelay -1 the append waited %v, want 0", waited)
		}
		if records != 1 {
			t.Errorf("%d log records, want 1", records)
		}
	})
}

// TestGatherConcurrentAppendsShareRecords: appends made at once share
// records: fewer durable writes than appends.
func TestGatherConcurrentAppendsShareRecords(t *testing.T) {
	const n = 64
	s := openGather(t, 0)
	records := s.Records()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			appendOne(t, s, "t/c-"+string(rune('a'+i%26)))
		})
	}
	close(start)
	wg.Wait()
	got := s.Records() - records
	if got >= n {
		t.Errorf("%d concurrent appends made %d log records, want fewer", n, got)
	}
	t.Logf("%d concurrent appends, %d log records", n, got)
	if m := s.QueueStats().Messages; m != n {
		t.Errorf("%d messages stored, want %d", m, n)
	}
}
