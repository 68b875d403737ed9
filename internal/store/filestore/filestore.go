// Package filestore is the embedded file engine, postern's durable default
// (--store=file:DIR). It owns the data directory: the database file
// postern.db (bbolt), the write-ahead log wal-0.log and wal-1.log, and a
// LOCK file that keeps a second server out.
//
// # Durability
//
// An operation that changes anything returns only after its change is
// synced to disk, so a 2xx built on it survives kill -9 and power loss.
// Settling a lease is the exception: it comes after the consumer's answer,
// so no answer rests on it, and its changes go out with the next sync
// (within 5 ms) without the caller waiting (a crash before then queues the
// message again: at least once).
// Concurrent writers share syncs (group commit), and a write does not wait
// behind a sync it does not need: an operation queues its changes and
// waits; the operation that opens a batch, while fewer than
// Options.SyncWindow batches are being written (and with eight operations
// in it when others are), seals it, writes it as one record of the
// write-ahead log, in place in a pre-zeroed file, and syncs it
// (fdatasync; or, where the file system takes it, the record is written
// directly with RWF_DSYNC, one system call that returns once it is on
// disk), with a window above 1 while the next batch is sealed and
// written beside it. A batch is acknowledged in order, once it and every
// batch before it are durable. Before sealing a batch, its writer lets
// the operations already on their way into it join (begun, their writes
// not yet queued; at most Options.GatherDelay), since one that misses it
// waits for a whole sync more. The busier the server, the more
// writes each sync carries. An operation that changes nothing still waits
// for the writes queued before it, since its answer may rest on them;
// pure reads (Len, Status) never wait.
//
// A checkpointer applies logged batches to postern.db in the background
// (one synced bbolt transaction every 200 ms, or when a log file is half
// full), keeping only the last change of each record; then a log file can
// be reused. At open, the log is replayed into postern.db.
//
// # Layout
//
// The queue index (ids, pending flags, dedup keys, expiries, content types)
// is the memory engine's, the shared internal/store/index, held in memory
// and rebuilt at open; this engine is its Backend (journal.go). Bodies
// live in postern.db, and in memory only until their checkpoint. Each
// change to the index is recorded as puts and deletes of records in five
// buckets (messages, pending marks, remembered dedup keys, replies, meta)
// and logged with the other changes of its batch, so every operation is
// atomic on disk too. Records carry a CRC-32C, checked at open and when a
// body is read. Topic histories (store.History) are the index's, kept in
// memory only: a convenience for subscribers coming back, not a
// guarantee, which a restart forgets (Since then reports the gap to
// anyone who had seen entries before).
//
// # Failures
//
// A failed log write fails its batch and every batch queued after it (they
// may have seen its effects), rebuilds the index from what is durable, and
// refuses writes for RetryInterval without touching the disk; errors are
// store.ErrNoSpace (disk full) or store.ErrUnavailable (I/O error). A
// failed checkpoint rolls back (bbolt keeps the file consistent) and is
// retried; writes go on into the log while it has room. Reads keep working
// throughout. A directory that cannot be written at open is served
// read-only. A damaged or truncated file is refused at open with an error
// naming it; README's "Data directory" section says how to recover.
//
// # Why bbolt
//
// bench/engines compares bbolt with pebble under this engine's write
// pattern (BENCHMARKS.md, "File engine"). Pebble commits faster and
// compresses, but it treats a failed log write as fatal ("the commit
// pipeline will be horked"), so a full disk would end the process instead
// of refusing writes while reads go on; it also brings some thirty modules.
// bbolt rolls a failed commit back and stays readable, is one file and one
// small module, and reopens and scans a million messages several times
// faster. Its commits (two fsyncs and a tree update each) are too slow to
// be on the path of every write, hence the log in front of it, which makes
// durable produce over HTTP reach about half the memory engine's rate or
// more (bench/filestore.go).
package filestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/index"
)

// Defaults of Options.
const (
	// DefaultDir is the data directory when none is given, relative to the
	// working directory.
	DefaultDir = "postern-data"
	// DefaultSweepInterval is how often expired messages, replies and
	// remembered dedup keys are removed in the background.
	DefaultSweepInterval = index.DefaultSweepInterval
	// DefaultRetryInterval is how long writes fail at once after a write
	// failed, before the disk is tried again.
	DefaultRetryInterval = time.Second
	// DefaultCheckpointInterval is how often logged writes are applied to
	// the database file.
	DefaultCheckpointInterval = 200 * time.Millisecond
	// DefaultSyncWindow is how many batches are written and syncing at
	// once by default: one. On the 2-core VM of BENCHMARKS.md, in two
	// interleaved quiet runs of `go run ./bench -run
	// 'filestore/produce|tunnel/file' -count 3`, a window of 4 made HTTP
	// produce slower (0.38-0.49x the cheapest handler against 0.48-0.52x
	// with 1): each fdatasync costs about 70 µs of CPU whatever it carries,
	// and smaller concurrent batches make more of them. Measured again
	// with records written by RWF_DSYNC (issue 20, 7 interleaved pairs on
	// busy cores), a window of 2 carried 12 operations a record against
	// 14-15 and lost 5 pairs of 7 in requests per second; on a quiet
	// machine (load 1.3-3.7, 5 interleaved pairs of tunnel/wrk) it lost 4
	// of 5, file-engine produce a median 0.42x baseline-hello against
	// 0.45x.
	DefaultSyncWindow = 1
	// MaxSyncWindow is the largest Options.SyncWindow.
	MaxSyncWindow = 16
	// DefaultGatherDelay is how long the writer of a batch waits at most
	// for the operations already on their way into it (begun, their
	// writes not queued yet) before sealing it. They usually join within
	// microseconds; the bound is for one that was descheduled on the
	// way, and stays well under a sync on the disks measured (0.5 to 2
	// ms on the VM of BENCHMARKS.md).
	DefaultGatherDelay = 200 * time.Microsecond
)

// FileName is the database file inside the data directory.
const FileName = "postern.db"

// LockName is the lock file inside the data directory.
const LockName = "LOCK"

// Options configures a Store.
type Options struct {
	// Dir is the data directory, created if missing; empty means DefaultDir.
	Dir string
	// Now is the clock for expiry; nil means time.Now.
	Now func() time.Time
	// SweepInterval is how often expired data is removed; zero means
	// DefaultSweepInterval, negative disables the background sweep.
	SweepInterval time.Duration
	// RetryInterval is how long writes are refused without trying the disk
	// after a write failed; zero means DefaultRetryInterval.
	RetryInterval time.Duration
	// WALSize is the size of each of the two write-ahead log files, used
	// when they are created; zero means DefaultWALSize.
	WALSize int64
	// CheckpointInterval is how often logged writes are applied to the
	// database file; zero means DefaultCheckpointInterval.
	CheckpointInterval time.Duration
	// Logger receives write failures and recoveries; nil means
	// slog.Default().
	Logger *slog.Logger
	// SyncWindow is how many batches may be written and syncing at once
	// (1 to MaxSyncWindow; zero means DefaultSyncWindow). A batch is
	// acknowledged only once every batch before it is durable, so a crash
	// can leave at most SyncWindow-1 intact records after a torn one, none
	// of them acknowledged; each log file's header records the window it
	// was written with. More than 1 suits disks where a sync is a long
	// wait and CPU is to spare.
	SyncWindow int
	// GatherDelay is how long the writer of a batch waits at most for
	// the operations already on their way into it before sealing it;
	// zero means DefaultGatherDelay, negative seals every batch as soon
	// as its writer is chosen.
	GatherDelay time.Duration
}

// Store is the file engine: the shared queue index, with this package as
// its backend.
type Store struct {
	*index.Index
	dir   string
	path  string
	now   func() time.Time
	retry time.Duration
	log   *slog.Logger

	db     *bolt.DB
	wal    *wal
	unlock func()
	c      *committer
	cp     *checkpointer

	// entering counts the operations that wait for their writes
	// (index.OpWrite) between Begin and queueing their writes: on their
	// way into the batch being collected.
	entering atomic.Int32

	// fail, when set, is the last write failure.
	fail atomic.Pointer[failure]
	// readOnly is set when the data directory could not be written at
	// open: the store serves reads and refuses every write.
	readOnly bool

	closeOnce sync.Once
	closeErr  error
}

type failure struct {
	err   error
	until time.Time // zero: for good
}

var (
	_ store.Engine  = (*Store)(nil)
	_ store.History = (*Store)(nil)
	_ store.Stats   = (*Store)(nil)
)

// Open opens (or creates) the data directory and loads its index. It fails
// when another process holds the directory, and when the database file is
// damaged, with an error naming the file.
func Open(opts Options) (*Store, error) {
	dir := opts.Dir
	if dir == "" {
		dir = DefaultDir
	}
	s := &Store{
		dir:   dir,
		path:  filepath.Join(dir, FileName),
		now:   opts.Now,
		retry: opts.RetryInterval,
		log:   opts.Logger,
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.Index = index.New(backend{s}, s.now)
	if s.retry <= 0 {
		s.retry = DefaultRetryInterval
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("file store: creating data directory: %w", err)
	}
	s.readOnly = !writableDir(dir)
	unlock, err := lockDir(dir, s.readOnly)
	if err != nil {
		return nil, err
	}
	s.unlock = unlock
	if err := s.openDB(); err != nil {
		unlock()
		return nil, err
	}
	applied, ov, err := s.recoverLog(opts.WALSize)
	if err == nil {
		_, err = s.load(ov, store.ID{})
	}
	window := opts.SyncWindow
	if window <= 0 {
		window = DefaultSyncWindow
	}
	window = min(window, MaxSyncWindow)
	if err == nil && !s.readOnly {
		s.wal.window = uint32(window)
		err = s.wal.start(applied + 1)
	}
	if err != nil {
		if s.wal != nil {
			s.wal.close()
		}
		s.db.Close()
		unlock()
		return nil, err
	}
	cpi := opts.CheckpointInterval
	if cpi <= 0 {
		cpi = DefaultCheckpointInterval
	}
	s.cp = newCheckpointer(s, applied, cpi)
	gather := opts.GatherDelay
	if gather == 0 {
		gather = DefaultGatherDelay
	}
	s.c = newCommitter(s, applied+1, window, max(gather, 0))
	if s.readOnly {
		s.fail.Store(&failure{err: fmt.Errorf("file store: data directory %s is read-only, write refused (restart postern once it is writable): %w", dir, store.ErrUnavailable)})
		s.log.Warn("file store: the data directory is read-only; serving reads only", "dir", dir)
	}
	s.Start(opts.SweepInterval)
	return s, nil
}

// Name implements store.Engine.
func (s *Store) Name() string { return "file" }

// Dir returns the data directory.
func (s *Store) Dir() string { return s.dir }

// Ping implements store.Engine. A store that refuses writes for good (its
// file could not be reloaded after a failure) is not ready; one that is
// only retrying after a full disk is, since reads work.
func (s *Store) Ping(context.Context) error {
	if s.Closed() {
		return store.ErrClosed
	}
	if f := s.fail.Load(); f != nil && f.until.IsZero() && !s.readOnly {
		return f.err
	}
	return nil
}

// Close implements store.Engine: it stops the sweep, commits what is
// queued, closes the file and releases the directory.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.Index.Close()
		// Every operation that got past the closed check holds its shard
		// lock until it has queued its write: after this barrier nothing
		// more is queued.
		s.LockAll()
		s.UnlockAll()
		s.c.close()
		if err := s.cp.close(); err != nil {
			// Nothing is lost: the log keeps what the database lacks, and
			// the next open applies it.
			s.log.Warn("file store: the last checkpoint failed; the log keeps its writes for the next start", "path", s.path, "err", err)
		}
		s.closeErr = errors.Join(s.wal.close(), s.db.Close())
		s.unlock()
	})
	return s.closeErr
}

// WriteError reports why writes are refused until a restart (the data
// directory was read-only at start), or nil: the node's readiness check
// asks, since reads go on meanwhile and Ping says nothing of it. A full
// disk, which heals by itself, is not reported.
func (s *Store) WriteError() error {
	if f := s.fail.Load(); f != nil && s.readOnly {
		return f.err
	}
	return nil
}

// writable reports the error writes fail with right now, if any.
func (s *Store) writable() error {
	f := s.fail.Load()
	if f == nil || (!f.until.IsZero() && !time.Now().Before(f.until)) {
		return nil
	}
	return f.err
}

// writeError turns a failed commit into the error callers see: ErrNoSpace
// for a full disk, ErrUnavailable otherwise, one line naming the file.
func (s *Store) writeError(err error) error {
	if errors.Is(err, store.ErrNoSpace) || errors.Is(err, store.ErrUnavailable) {
		return err // already explained
	}
	msg := err.Error()
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), strings.Contains(msg, "no space left"):
		return fmt.Errorf("file store: %s: disk full, write refused: %w", s.path, store.ErrNoSpace)
	case errors.Is(err, syscall.EROFS), strings.Contains(msg, "read-only file system"):
		return fmt.Errorf("file store: %s is on a read-only file system, write refused: %w", s.path, store.ErrUnavailable)
	}
	return fmt.Errorf("file store: writing %s failed (%s): %w", s.path, oneLine(msg), store.ErrUnavailable)
}

// recover runs in the committer after a write to the log failed with err:
// the writes queued meanwhile fail too, and the index is rebuilt from what
// is durable, the database file and the logged batches not yet in it.
func (s *Store) recover(err error) {
	s.LockAll()
	defer s.UnlockAll()
	s.fail.Store(&failure{err: err, until: time.Now().Add(s.retry)})
	s.c.failQueued(err)
	s.cp.run.Lock()
	defer s.cp.run.Unlock()
	ov, last := s.cp.overlay()
	hs, lerr := s.load(ov, last)
	s.cp.hold(hs)
	if lerr != nil {
		s.log.Error("file store: reloading after a failed write failed; writes stay refused", "path", s.path, "err", lerr)
		s.fail.Store(&failure{err: fmt.Errorf("file store: %s could not be reloaded after a failed write: %w", s.path, store.ErrUnavailable)})
		return
	}
	s.log.Warn("file store: write failed; refusing writes for a while, reads go on", "path", s.path, "err", err, "retry_in", s.retry)
}

// committed is called by the committer after a successful commit.
func (s *Store) committed() {
	if f := s.fail.Load(); f != nil && !f.until.IsZero() && s.fail.CompareAndSwap(f, nil) {
		s.log.Info("file store: writes work again", "path", s.path)
	}
}

func oneLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// recoverLog opens the write-ahead log and applies the batches it holds
// that the database file lacks, returning the sequence number of the last
// batch in the database.
//
// On a read-only directory nothing can be applied: the batches are
// returned as an overlay for load instead.
func (s *Store) recoverLog(size int64) (uint64, map[string][]byte, error) {
	if size <= 0 {
		size = DefaultWALSize
	}
	applied, err := s.appliedSeq()
	if err != nil {
		return 0, nil, err
	}
	w, recs, err := openWAL(s.dir, size, applied, s.readOnly)
	if err != nil {
		return 0, nil, err
	}
	s.wal = w
	if len(recs) == 0 {
		return applied, nil, nil
	}
	bs := make([]*batch, len(recs))
	for i, r := range recs {
		id, muts, err := decodeBatch(r.payload)
		if err != nil {
			return 0, nil, logDamaged(filepath.Join(s.dir, "wal-*.log"), "record %d: %v", r.seq, err)
		}
		bs[i] = &batch{seq: r.seq, muts: muts, maxID: id}
	}
	last := recs[len(recs)-1].seq
	if s.readOnly {
		ov := make(map[string][]byte)
		for _, b := range bs {
			for _, m := range b.muts {
				ov[string([]byte{m.bucket})+string(m.key)] = m.val
			}
		}
		return last, ov, nil
	}
	if err := s.apply(bs, last); err != nil {
		return 0, nil, fmt.Errorf("file store: applying the write-ahead log to %s: %w", s.path, err)
	}
	s.log.Info("file store: applied the write-ahead log", "path", s.path, "batches", len(recs))
	return last, nil, nil
}

// writableDir reports whether files can be created in dir.
func writableDir(dir string) bool {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return !errors.Is(err, syscall.EROFS) && !errors.Is(err, os.ErrPermission)
	}
	f.Close()
	os.Remove(f.Name())
	return true
}
