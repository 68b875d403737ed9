// Package memstore is the in-memory storage engine: fast, shared by nothing,
// and gone when the process exits. It is meant for tests and throwaway
// relays; the embedded file engine is the durable default.
//
// Keys are spread over shards, each guarded by its own mutex, so unrelated
// queues never contend. Within a queue, messages sit in a slice ordered by
// id; the pending set is a flag on the entry, since in practice it holds at
// most a handful of messages at the head of the queue.
package memstore

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

// Options configures a Store.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// SweepInterval is how often expired data is removed; zero means
	// DefaultSweepInterval, negative disables the background sweep.
	SweepInterval time.Duration
}

// Store is the memory engine.
type Store struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [numShards]shard

	queues   atomic.Int64
	messages atomic.Int64

	closed    atomic.Bool
	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

var (
	_ store.Engine = (*Store)(nil)
	_ store.Stats  = (*Store)(nil)
)

type shard struct {
	mu        sync.Mutex
	lastID    store.ID // ids increase per shard, hence per key, even after a queue is forgotten
	queues    map[string]*queue
	replies   map[replyKey]reply
	histories map[string]*ordered.History
}

type replyKey struct {
	key string
	id  store.ID
}

type reply struct {
	msg     store.Message
	expires time.Time
}

type entry struct {
	msg     store.Message
	pending bool
	// dedupUntil is when the message's dedup key stops being remembered.
	dedupUntil time.Time
}

func (e *entry) MessageID() store.ID { return e.msg.ID }

type queue struct {
	ordered.Queue[*entry]
	// queued maps a dedup key to its entry while the entry is unseen.
	queued map[string]*entry
	// seen remembers dedup keys of messages handed out, until the time given.
	seen map[string]time.Time
}

// New returns a running memory store. Close stops its background sweep.
func New(opts Options) *Store {
	s := &Store{
		now:  opts.Now,
		seed: maphash.MakeSeed(),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if s.now == nil {
		s.now = time.Now
	}
	for i := range s.shards {
		s.shards[i].queues = make(map[string]*queue)
		s.shards[i].replies = make(map[replyKey]reply)
		s.shards[i].histories = make(map[string]*ordered.History)
	}
	interval := opts.SweepInterval
	if interval == 0 {
		interval = DefaultSweepInterval
	}
	if interval > 0 {
		go s.sweepLoop(interval)
	} else {
		close(s.done)
	}
	return s
}

// Name implements store.Engine.
func (s *Store) Name() string { return "memory" }

// Ping implements store.Engine.
func (s *Store) Ping(context.Context) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return nil
}

// Close implements store.Engine.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
	})
	<-s.done
	return nil
}

// QueueStats implements store.Stats.
func (s *Store) QueueStats() store.QueueStats {
	return store.QueueStats{Queues: int(s.queues.Load()), Messages: int(s.messages.Load())}
}

func (s *Store) shard(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)%numShards]
}

// lock returns key's shard locked, or ErrClosed.
func (s *Store) lock(key string) (*shard, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	sh := s.shard(key)
	sh.mu.Lock()
	return sh, nil
}

// forget drops the dedup bookkeeping for e when it is handed out or leaves
// the queue. When delivered is set, its dedup key is remembered until the end
// of its window, so that a resend is suppressed.
func (q *queue) forget(e *entry, delivered bool, now time.Time) {
	k := e.msg.DedupKey
	if k == "" {
		return
	}
	if q.queued[k] == e {
		delete(q.queued, k)
	}
	if delivered && e.dedupUntil.After(now) {
		if q.seen == nil {
			q.seen = make(map[string]time.Time)
		}
		q.seen[k] = e.dedupUntil
	}
}

// getQueue returns key's queue, creating it when create is set.
func (s *Store) getQueue(sh *shard, key string, create bool) *queue {
	q := sh.queues[key]
	if q == nil && create {
		q = &queue{}
		sh.queues[key] = q
		s.queues.Add(1)
	}
	return q
}

// maybeForget drops an empty queue that remembers no dedup keys.
func (s *Store) maybeForget(sh *shard, key string, q *queue) {
	if q.Len() == 0 && len(q.seen) == 0 {
		delete(sh.queues, key)
		s.queues.Add(-1)
	}
}

// Append implements store.Queues.
func (s *Store) Append(ctx context.Context, key string, m store.Message, opts store.AppendOptions) (store.AppendResult, error) {
	sh, err := s.lock(key)
	if err != nil {
		return store.AppendResult{}, err
	}
	defer sh.mu.Unlock()
	now := s.now()
	q := s.getQueue(sh, key, true)
	defer s.maybeForget(sh, key, q)

	var expires time.Time
	if opts.TTL > 0 {
		expires = now.Add(opts.TTL)
	}
	if k := opts.DedupKey; k != "" {
		if e := q.queued[k]; e != nil && !e.msg.Expired(now) {
			e.msg.ContentType = m.ContentType
			e.msg.Body = m.Body
			e.msg.ExpiresAt = expires
			return store.AppendResult{ID: e.msg.ID, Len: q.Len(), Duplicate: true}, nil
		}
		if until, ok := q.seen[k]; ok && now.Before(until) {
			return store.AppendResult{Len: q.Len(), Duplicate: true}, nil
		}
	}
	if opts.Limit > 0 && q.Len() >= opts.Limit {
		return store.AppendResult{}, &store.FullError{Len: q.Len()}
	}
	sh.lastID = store.NextID(sh.lastID, now)
	e := &entry{msg: store.Message{
		ID:          sh.lastID,
		ContentType: m.ContentType,
		Body:        m.Body,
		DedupKey:    opts.DedupKey,
		ExpiresAt:   expires,
	}}
	if opts.DedupKey != "" {
		e.dedupUntil = now.Add(opts.DedupWindow)
	}
	q.Push(e)
	s.messages.Add(1)
	if k := opts.DedupKey; k != "" {
		if q.queued == nil {
			q.queued = make(map[string]*entry)
		}
		q.queued[k] = e
		delete(q.seen, k)
	}
	for _, k := range ordered.Overflow(q.seen, opts.DedupMax) {
		delete(q.seen, k)
	}
	res := store.AppendResult{ID: e.msg.ID}
	if opts.MaxLen > 0 {
		for q.Len() > opts.MaxLen {
			old := q.RemoveAt(0)
			q.forget(old, false, now)
			s.messages.Add(-1)
			res.Trimmed++
		}
	}
	res.Len = q.Len()
	return res, nil
}

// Take implements store.Queues.
func (s *Store) Take(ctx context.Context, key string, mode store.TakeMode) (store.Message, bool, error) {
	sh, err := s.lock(key)
	if err != nil {
		return store.Message{}, false, err
	}
	defer sh.mu.Unlock()
	q := sh.queues[key]
	if q == nil {
		return store.Message{}, false, nil
	}
	defer s.maybeForget(sh, key, q)
	now := s.now()
	if mode == store.TakePending {
		for _, e := range q.Live() {
			if e.pending && !e.msg.Expired(now) {
				return e.msg, true, nil
			}
		}
	}
	for i := 0; i < q.Len(); {
		e := q.Live()[i]
		if e.msg.Expired(now) {
			q.RemoveAt(i)
			q.forget(e, false, now)
			s.messages.Add(-1)
			continue
		}
		if e.pending {
			i++
			continue
		}
		if mode == store.TakePending {
			e.pending = true
			q.forget(e, true, now)
			return e.msg, true, nil
		}
		q.RemoveAt(i)
		s.messages.Add(-1)
		q.forget(e, true, now)
		return e.msg, true, nil
	}
	return store.Message{}, false, nil
}

// TakeAll implements store.Queues.
func (s *Store) TakeAll(ctx context.Context, key string, limit int) ([]store.Message, error) {
	sh, err := s.lock(key)
	if err != nil {
		return nil, err
	}
	defer sh.mu.Unlock()
	q := sh.queues[key]
	if q == nil {
		return nil, nil
	}
	defer s.maybeForget(sh, key, q)
	now := s.now()
	var out []store.Message
	for i := 0; i < q.Len() && (limit <= 0 || len(out) < limit); {
		e := q.Live()[i]
		if e.pending {
			i++
			continue
		}
		q.RemoveAt(i)
		s.messages.Add(-1)
		if e.msg.Expired(now) {
			q.forget(e, false, now)
			continue
		}
		q.forget(e, true, now)
		out = append(out, e.msg)
	}
	return out, nil
}

// Restore implements store.Queues.
func (s *Store) Restore(ctx context.Context, key string, m store.Message) error {
	sh, err := s.lock(key)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	q := s.getQueue(sh, key, true)
	defer s.maybeForget(sh, key, q)
	now := s.now()
	if m.Expired(now) {
		return nil
	}
	i, found := q.Find(m.ID)
	if found {
		return nil
	}
	e := &entry{msg: m}
	q.InsertAt(i, e)
	s.messages.Add(1)
	if k := m.DedupKey; k != "" {
		if q.queued == nil {
			q.queued = make(map[string]*entry)
		}
		if q.queued[k] == nil {
			q.queued[k] = e
			e.dedupUntil = q.seen[k]
			delete(q.seen, k)
		}
	}
	return nil
}

// Ack implements store.Queues.
func (s *Store) Ack(ctx context.Context, key string, id store.ID) (bool, error) {
	sh, err := s.lock(key)
	if err != nil {
		return false, err
	}
	defer sh.mu.Unlock()
	q := sh.queues[key]
	if q == nil {
		return false, nil
	}
	defer s.maybeForget(sh, key, q)
	i, found := q.Find(id)
	if !found {
		return false, nil
	}
	now := s.now()
	e := q.RemoveAt(i)
	s.messages.Add(-1)
	q.forget(e, true, now)
	return true, nil
}

// Status implements store.Queues.
func (s *Store) Status(ctx context.Context, key string, id store.ID) (store.State, error) {
	sh, err := s.lock(key)
	if err != nil {
		return store.StateNone, err
	}
	defer sh.mu.Unlock()
	q := sh.queues[key]
	if q == nil {
		return store.StateNone, nil
	}
	i, found := q.Find(id)
	if !found {
		return store.StateNone, nil
	}
	e := q.Live()[i]
	switch {
	case e.msg.Expired(s.now()):
		return store.StateNone, nil
	case e.pending:
		return store.StatePending, nil
	}
	return store.StateQueued, nil
}

// Len implements store.Queues.
func (s *Store) Len(ctx context.Context, key string) (int, error) {
	sh, err := s.lock(key)
	if err != nil {
		return 0, err
	}
	defer sh.mu.Unlock()
	if q := sh.queues[key]; q != nil {
		return q.Len(), nil
	}
	return 0, nil
}

// Clear implements store.Queues.
func (s *Store) Clear(ctx context.Context, key string) (int, error) {
	sh, err := s.lock(key)
	if err != nil {
		return 0, err
	}
	defer sh.mu.Unlock()
	q := sh.queues[key]
	if q == nil {
		return 0, nil
	}
	n := q.Len()
	s.messages.Add(int64(-n))
	delete(sh.queues, key)
	s.queues.Add(-1)
	return n, nil
}

// Reply implements store.Queues.
func (s *Store) Reply(ctx context.Context, key string, id store.ID, r store.Message, ttl time.Duration) (bool, error) {
	sh, err := s.lock(key)
	if err != nil {
		return false, err
	}
	defer sh.mu.Unlock()
	q := sh.queues[key]
	if q == nil {
		return false, nil
	}
	defer s.maybeForget(sh, key, q)
	i, found := q.Find(id)
	if !found || !q.Live()[i].pending {
		return false, nil
	}
	now := s.now()
	e := q.RemoveAt(i)
	s.messages.Add(-1)
	q.forget(e, true, now)
	r.ID = id
	var expires time.Time
	if ttl > 0 {
		expires = now.Add(ttl)
	}
	r.ExpiresAt = expires
	sh.replies[replyKey{key, id}] = reply{msg: r, expires: expires}
	return true, nil
}

// TakeReply implements store.Queues.
func (s *Store) TakeReply(ctx context.Context, key string, id store.ID) (store.Message, bool, error) {
	sh, err := s.lock(key)
	if err != nil {
		return store.Message{}, false, err
	}
	defer sh.mu.Unlock()
	rk := replyKey{key, id}
	r, ok := sh.replies[rk]
	if !ok {
		return store.Message{}, false, nil
	}
	delete(sh.replies, rk)
	if !r.expires.IsZero() && !s.now().Before(r.expires) {
		return store.Message{}, false, nil
	}
	return r.msg, true, nil
}

func (s *Store) sweepLoop(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			for i := range s.shards {
				s.sweep(&s.shards[i])
			}
		}
	}
}

// sweep removes expired replies, messages and dedup keys of one shard,
// visiting at most sweepBatch of each.
func (s *Store) sweep(sh *shard) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	s.sweepHistories(sh, now)
	n := 0
	for k, r := range sh.replies {
		if n++; n > sweepBatch {
			break
		}
		if !r.expires.IsZero() && !now.Before(r.expires) {
			delete(sh.replies, k)
		}
	}
	n = 0
	for key, q := range sh.queues {
		if n > sweepBatch {
			break
		}
		for k, until := range q.seen {
			n++
			if !now.Before(until) {
				delete(q.seen, k)
			}
		}
		for i := 0; i < q.Len() && n <= sweepBatch; n++ {
			e := q.Live()[i]
			if !e.msg.Expired(now) {
				i++
				continue
			}
			q.RemoveAt(i)
			q.forget(e, false, now)
			s.messages.Add(-1)
		}
		s.maybeForget(sh, key, q)
	}
}
