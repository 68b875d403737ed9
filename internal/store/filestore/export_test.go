package filestore

import (
	"fmt"
	"os"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/internal/store/index"
)

// Crash stops s as kill -9 would: nothing queued is written, no
// checkpoint is made, the files and the lock are simply let go. What the
// operations that returned wrote is in the files (the page cache survives
// a process), lazy changes (settling) included: the crash comes once they
// are written, so that the model test can compare answers with the memory
// engine's. Losing them is the kill -9 tests' part (crash_test.go).
func (s *Store) Crash() {
	s.closeOnce.Do(func() {
		s.Index.Close()
		s.LockAll()
		s.UnlockAll()
		s.c.sync()
		// Stop the loops without their final flush and checkpoint.
		s.c.mu.Lock()
		s.c.cur.muts = nil
		s.c.mu.Unlock()
		s.cp.run.Lock()
		s.cp.mu.Lock()
		s.cp.unapplied = nil
		s.cp.mu.Unlock()
		s.cp.run.Unlock()
		s.c.close()
		s.cp.close()
		s.wal.close()
		s.db.Close()
		s.unlock()
	})
}

// CheckpointNow applies the logged batches to the database file.
func (s *Store) CheckpointNow() { s.cp.checkpoint() }

// DumpMsgs lists the message records in the database file.
func (s *Store) DumpMsgs() []string {
	var out []string
	s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNames[bMsgs]).ForEach(func(k, v []byte) error {
			key, id, _ := splitIDKey(k)
			out = append(out, key+" "+id.String())
			return nil
		})
	})
	return out
}

// CheckDisk checkpoints and compares the message records in the database
// file with the index.
func (s *Store) CheckDisk() string {
	s.c.sync()
	s.cp.checkpoint()
	disk := map[string]bool{}
	for _, k := range s.DumpMsgs() {
		disk[k] = true
	}
	mem := map[string]bool{}
	s.Each(func(key string, e *index.Entry) { mem[key+" "+e.MessageID().String()] = true })
	var diff []string
	for k := range disk {
		if !mem[k] {
			diff = append(diff, "only on disk: "+k)
		}
	}
	for k := range mem {
		if !disk[k] {
			diff = append(diff, "only in memory: "+k)
		}
	}
	if len(diff) > 0 {
		return fmt.Sprint(diff)
	}
	return ""
}

// Records counts the log records written since open.
func (s *Store) Records() uint64 { return s.wal.records.Load() }

// Direct reports whether log records are written directly (O_DIRECT with
// RWF_DSYNC) right now.
func (s *Store) Direct() bool { return s.wal.direct.Load() }

// RefuseDirectWrites makes direct writes of log records fail as a file
// system that does not take them would, until the returned function is
// called.
func RefuseDirectWrites() (restore func()) {
	directWrite = func(*os.File, []byte, int64) error { return errDirectUnsupported }
	return func() { directWrite = writeDSync }
}

// PauseNextWrite stops the next operation that waits for its write on its
// way into the batch being collected (begun, its write not queued yet):
// paused is closed once it has stopped there, and release lets it go on.
// Call release before the test ends; only one pause may be set at a time.
func PauseNextWrite() (paused <-chan struct{}, release func()) {
	stopped, resume := make(chan struct{}), make(chan struct{})
	var taken atomic.Bool
	enteredHook = func() {
		if taken.CompareAndSwap(false, true) {
			close(stopped)
			<-resume
		}
	}
	return stopped, func() {
		enteredHook = nil
		close(resume)
	}
}
