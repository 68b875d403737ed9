// Package index is the queue index that the memory and file engines
// share, and the queue logic that runs on it: every queue's messages in id
// order (ordered.Queue) with their state, the dedup keys of queued
// messages and, for their window, of handed-out ones, replies, expiry and
// its background sweep, and topic histories (ordered.Histories). An Index
// implements store.Queues, store.History and store.Stats.
//
// An engine embeds an Index and gives it a Backend, which holds what is
// the engine's own: where bodies live once they leave memory, and how a
// change becomes durable. Each operation that may change anything gets a
// Journal from the Backend, makes its changes under its shard's lock while
// telling the Journal each one, and hands the Journal back with the lock
// still held (Backend.End), so that a durable engine records the changes
// in the order the index made them. The memory engine's Backend (Memory)
// keeps every body in its entry and records nothing.
//
// Keys are spread over shards, each guarded by its own mutex, so unrelated
// queues never contend. Within a queue, messages sit in a slice ordered by
// id; the pending set is a state of the entry, since in practice it holds
// at most a handful of messages at the head of the queue.
package index

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/ordered"
)

// DefaultSweepInterval is how often expired messages, replies and
// remembered dedup keys are removed in the background.
const DefaultSweepInterval = time.Second

// sweepBatch bounds the work of one sweep step per shard.
const sweepBatch = 1024

const numShards = 64

// Index is the shared queue index. Its methods are safe for concurrent
// use.
type Index struct {
	b      Backend
	now    func() time.Time
	seed   maphash.Seed
	shards [numShards]Shard
	hist   *ordered.Histories

	queues   atomic.Int64
	messages atomic.Int64

	closed    atomic.Bool
	closeOnce sync.Once
	stop      chan struct{}
	swept     chan struct{} // closed when the sweep has stopped
	started   atomic.Bool
}

var (
	_ store.Queues  = (*Index)(nil)
	_ store.History = (*Index)(nil)
	_ store.Stats   = (*Index)(nil)
)

// Shard is one lock's worth of queues and replies.
type Shard struct {
	mu      sync.Mutex
	lastID  store.ID // ids increase per shard, hence per key, even after a queue is forgotten
	tokens  int64    // the last lease token handed out
	queues  map[string]*queue
	replies map[replyKey]*Reply
}

// Unlock releases the shard; Backend.End calls it.
func (sh *Shard) Unlock() { sh.mu.Unlock() }

type replyKey struct {
	key string
	id  store.ID
}

// New returns an empty index on backend b and the clock now (nil:
// time.Now). Start starts its background sweep.
func New(b Backend, now func() time.Time) *Index {
	if now == nil {
		now = time.Now
	}
	x := &Index{
		b:     b,
		now:   now,
		seed:  maphash.MakeSeed(),
		hist:  ordered.NewHistories(now),
		stop:  make(chan struct{}),
		swept: make(chan struct{}),
	}
	x.reset()
	return x
}

// reset empties every shard, keeping the id counters.
func (x *Index) reset() {
	for i := range x.shards {
		x.shards[i].queues = make(map[string]*queue)
		x.shards[i].replies = make(map[replyKey]*Reply)
	}
	x.queues.Store(0)
	x.messages.Store(0)
}

// Start removes expired data every interval in the background (zero:
// DefaultSweepInterval; negative: never) until Close.
func (x *Index) Start(interval time.Duration) {
	if interval == 0 {
		interval = DefaultSweepInterval
	}
	if interval < 0 || !x.started.CompareAndSwap(false, true) {
		return
	}
	go x.sweepLoop(interval)
}

// Close makes every later operation fail with store.ErrClosed and stops
// the sweep, waiting for a sweep step in progress. It is idempotent.
// Operations already past their closed check may still be running: an
// engine that must wait for them takes every shard lock (LockAll).
func (x *Index) Close() {
	x.closeOnce.Do(func() {
		x.closed.Store(true)
		close(x.stop)
		if !x.started.Swap(true) {
			close(x.swept)
		}
	})
	<-x.swept
}

// Closed reports whether Close was called.
func (x *Index) Closed() bool { return x.closed.Load() }

// LockAll takes every shard lock, in order; UnlockAll releases them. An
// engine holds them to rebuild the index or to wait for operations in
// progress.
func (x *Index) LockAll() {
	for i := range x.shards {
		x.shards[i].mu.Lock()
	}
}

// UnlockAll releases what LockAll took.
func (x *Index) UnlockAll() {
	for i := range x.shards {
		x.shards[i].mu.Unlock()
	}
}

// QueueStats implements store.Stats.
func (x *Index) QueueStats() store.QueueStats {
	return store.QueueStats{Queues: int(x.queues.Load()), Messages: int(x.messages.Load())}
}

// Record implements store.History.
func (x *Index) Record(ctx context.Context, topic string, m store.Message, maxLen int, ttl time.Duration) (store.ID, error) {
	if x.closed.Load() {
		return store.ID{}, store.ErrClosed
	}
	return x.hist.Record(ctx, topic, m, maxLen, ttl)
}

// Since implements store.History.
func (x *Index) Since(ctx context.Context, topic string, after store.ID, max int) ([]store.Message, bool, error) {
	if x.closed.Load() {
		return nil, false, store.ErrClosed
	}
	return x.hist.Since(ctx, topic, after, max)
}

// Each calls fn for every entry of every queue, a shard at a time under
// its lock, for checks that compare the index with an engine's files.
func (x *Index) Each(fn func(key string, e *Entry)) {
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.Lock()
		for key, q := range sh.queues {
			for _, e := range q.Live() {
				fn(key, e)
			}
		}
		sh.mu.Unlock()
	}
}

func (x *Index) shard(key string) *Shard {
	return &x.shards[maphash.String(x.seed, key)%numShards]
}

func (x *Index) sweepLoop(interval time.Duration) {
	defer close(x.swept)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-x.stop:
			return
		case <-t.C:
			x.hist.Sweep(sweepBatch)
			for i := range x.shards {
				if x.closed.Load() || !x.sweep(&x.shards[i]) {
					break
				}
			}
		}
	}
}

// sweep removes expired replies, messages and dedup keys of one shard,
// visiting at most sweepBatch of each. It reports false, doing nothing,
// when the backend refuses writes.
func (x *Index) sweep(sh *Shard) bool {
	j := x.b.Begin(OpSweep)
	if j.Writable() != nil {
		return false
	}
	sh.mu.Lock()
	c := call{x: x, sh: sh, j: j, now: x.now(), checked: true}
	n := 0
	for rk, r := range sh.replies {
		if n++; n > sweepBatch {
			break
		}
		if r.msg.Expired(c.now) {
			delete(sh.replies, rk)
			j.DelReply(rk.key, rk.id)
		}
	}
	n = 0
	for key, q := range sh.queues {
		if n > sweepBatch {
			break
		}
		c.key = key
		for k, sn := range q.seen {
			n++
			if !c.now.Before(sn.until) {
				delete(q.seen, k)
				j.DelSeen(key, k)
			}
		}
		for i := 0; i < q.Len() && n <= sweepBatch; n++ {
			if !q.Live()[i].msg.Expired(c.now) {
				i++
				continue
			}
			c.remove(q, i, false)
		}
		c.maybeForget(q)
	}
	// A failure is the backend's to handle; the next sweep tries again.
	_ = x.b.End(j, sh)
	return true
}
