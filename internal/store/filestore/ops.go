package filestore

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/ordered"
)

// The index follows the memory engine's shapes and rules (memstore is the
// reference); every change is also recorded in the operation's write set.

type shard struct {
	mu      sync.Mutex
	lastID  store.ID // ids increase per shard, hence per key, even after a queue is forgotten
	queues  map[string]*queue
	replies map[replyKey]*reply
	// histories are topic histories, in memory only (history.go).
	histories map[string]*ordered.History
}

type replyKey struct {
	key string
	id  store.ID
}

type reply struct {
	msg  store.Message // Body nil: see body
	body atomic.Pointer[[]byte]
}

type entry struct {
	msg     store.Message // Body nil: see body
	pending bool
	// dedupUntil is when the message's dedup key stops being remembered.
	dedupUntil time.Time
	// body is the message body while the write that carries it is not yet
	// durable; nil means read it from the file.
	body atomic.Pointer[[]byte]
}

func (e *entry) MessageID() store.ID { return e.msg.ID }

type queue struct {
	ordered.Queue[*entry]
	// queued maps a dedup key to its entry while the entry is unseen.
	queued map[string]*entry
	// seen remembers dedup keys of messages handed out, until the time given.
	seen map[string]time.Time
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

// lockW is lock for operations that write whatever they find.
func (s *Store) lockW(key string) (*shard, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	return s.lock(key)
}

// Recording of changes.

func (w *wset) putMsg(key string, e *entry, body []byte) {
	k := keyFor(key, e.msg.ID)
	w.muts = append(w.muts, mut{bMsgs, k, encodeMsg(k, e.msg.ContentType, e.msg.DedupKey, e.msg.ExpiresAt, e.dedupUntil, body)})
	p := &body
	e.body.Store(p)
	w.held = append(w.held, held{&e.body, p})
}

func (w *wset) delMsg(key string, e *entry) {
	k := keyFor(key, e.msg.ID)
	w.muts = append(w.muts, mut{bucket: bMsgs, key: k})
	if e.pending {
		w.muts = append(w.muts, mut{bucket: bPending, key: k})
	}
}

func (w *wset) putPending(key string, e *entry) {
	k := keyFor(key, e.msg.ID)
	w.muts = append(w.muts, mut{bPending, k, encodePending(k)})
}

func (w *wset) putSeen(key, dedupKey string, until time.Time) {
	k := seenKeyFor(key, dedupKey)
	w.muts = append(w.muts, mut{bSeen, k, encodeSeen(k, until)})
}

func (w *wset) delSeen(key, dedupKey string) {
	w.muts = append(w.muts, mut{bucket: bSeen, key: seenKeyFor(key, dedupKey)})
}

// forget drops the dedup bookkeeping for e when it is handed out or leaves
// the queue. When delivered is set, its dedup key is remembered until the end
// of its window, so that a resend is suppressed.
func (q *queue) forget(key string, e *entry, delivered bool, now time.Time, w *wset) {
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
		w.putSeen(key, k, e.dedupUntil)
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
	if q.Len() == 0 && len(q.seen) == 0 && sh.queues[key] == q {
		delete(sh.queues, key)
		s.queues.Add(-1)
	}
}

// message returns e's message with its body, from memory or the file.
func (s *Store) message(key string, e *entry) (store.Message, error) {
	m := e.msg
	if p := e.body.Load(); p != nil {
		m.Body = *p
		return m, nil
	}
	r, err := s.readRecord(bMsgs, keyFor(key, m.ID))
	if err != nil {
		return store.Message{}, err
	}
	m.Body = r.body
	return m, nil
}

// Append implements store.Queues.
func (s *Store) Append(ctx context.Context, key string, m store.Message, opts store.AppendOptions) (store.AppendResult, error) {
	sh, err := s.lockW(key)
	if err != nil {
		return store.AppendResult{}, err
	}
	var w wset
	res, err := s.append(sh, key, m, opts, &w)
	if ferr := s.finish(sh, &w); ferr != nil {
		return store.AppendResult{}, ferr
	}
	return res, err
}

func (s *Store) append(sh *shard, key string, m store.Message, opts store.AppendOptions, w *wset) (store.AppendResult, error) {
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
			e.msg.ExpiresAt = expires
			w.putMsg(key, e, m.Body)
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
		DedupKey:    opts.DedupKey,
		ExpiresAt:   expires,
	}}
	if opts.DedupKey != "" {
		e.dedupUntil = now.Add(opts.DedupWindow)
	}
	q.Push(e)
	s.messages.Add(1)
	w.putMsg(key, e, m.Body)
	w.maxID = e.msg.ID
	if k := opts.DedupKey; k != "" {
		if q.queued == nil {
			q.queued = make(map[string]*entry)
		}
		q.queued[k] = e
		if _, ok := q.seen[k]; ok {
			delete(q.seen, k)
			w.delSeen(key, k)
		}
	}
	for _, k := range ordered.Overflow(q.seen, opts.DedupMax) {
		delete(q.seen, k)
		w.delSeen(key, k)
	}
	res := store.AppendResult{ID: e.msg.ID}
	if opts.MaxLen > 0 {
		for q.Len() > opts.MaxLen {
			old := q.RemoveAt(0)
			q.forget(key, old, false, now, w)
			w.delMsg(key, old)
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
	var w wset
	m, ok, err := s.take(sh, key, mode, &w)
	if ferr := s.finish(sh, &w); ferr != nil {
		return store.Message{}, false, ferr
	}
	return m, ok, err
}

func (s *Store) take(sh *shard, key string, mode store.TakeMode, w *wset) (store.Message, bool, error) {
	q := sh.queues[key]
	if q == nil {
		return store.Message{}, false, nil
	}
	defer s.maybeForget(sh, key, q)
	now := s.now()
	if mode == store.TakePending {
		for _, e := range q.Live() {
			if e.pending && !e.msg.Expired(now) {
				// Handing out the pending message again changes nothing.
				m, err := s.message(key, e)
				return m, err == nil, err
			}
		}
	}
	// Check writability only when about to change something, so that
	// polling an empty queue works while writes are refused.
	checked := false
	for i := 0; i < q.Len(); {
		e := q.Live()[i]
		if !e.pending && !checked {
			if err := s.writable(); err != nil {
				return store.Message{}, false, err
			}
			checked = true
		}
		if e.msg.Expired(now) {
			q.RemoveAt(i)
			q.forget(key, e, false, now, w)
			w.delMsg(key, e)
			s.messages.Add(-1)
			continue
		}
		if e.pending {
			i++
			continue
		}
		m, err := s.message(key, e)
		if err != nil {
			return store.Message{}, false, err
		}
		if mode == store.TakePending {
			e.pending = true
			w.putPending(key, e)
			q.forget(key, e, true, now, w)
			return m, true, nil
		}
		q.RemoveAt(i)
		w.delMsg(key, e)
		s.messages.Add(-1)
		q.forget(key, e, true, now, w)
		return m, true, nil
	}
	return store.Message{}, false, nil
}

// TakeAll implements store.Queues.
func (s *Store) TakeAll(ctx context.Context, key string, limit int) ([]store.Message, error) {
	sh, err := s.lock(key)
	if err != nil {
		return nil, err
	}
	var w wset
	out, err := s.takeAll(sh, key, limit, &w)
	if ferr := s.finish(sh, &w); ferr != nil {
		return nil, ferr
	}
	return out, err
}

func (s *Store) takeAll(sh *shard, key string, limit int, w *wset) ([]store.Message, error) {
	q := sh.queues[key]
	if q == nil {
		return nil, nil
	}
	defer s.maybeForget(sh, key, q)
	now := s.now()
	var out []store.Message
	checked := false
	for i := 0; i < q.Len() && (limit <= 0 || len(out) < limit); {
		e := q.Live()[i]
		if e.pending {
			i++
			continue
		}
		if !checked {
			if err := s.writable(); err != nil {
				return nil, err
			}
			checked = true
		}
		if e.msg.Expired(now) {
			q.RemoveAt(i)
			w.delMsg(key, e)
			s.messages.Add(-1)
			q.forget(key, e, false, now, w)
			continue
		}
		m, err := s.message(key, e)
		if err != nil {
			return out, err
		}
		q.RemoveAt(i)
		w.delMsg(key, e)
		s.messages.Add(-1)
		q.forget(key, e, true, now, w)
		out = append(out, m)
	}
	return out, nil
}

// Restore implements store.Queues.
func (s *Store) Restore(ctx context.Context, key string, m store.Message) error {
	// A restore puts back a message that would otherwise be lost: it tries
	// the disk even while writes are being refused after a failure.
	if s.readOnly {
		return s.writable()
	}
	sh, err := s.lock(key)
	if err != nil {
		return err
	}
	var w wset
	s.restore(sh, key, m, &w)
	return s.finish(sh, &w)
}

func (s *Store) restore(sh *shard, key string, m store.Message, w *wset) {
	q := s.getQueue(sh, key, true)
	defer s.maybeForget(sh, key, q)
	now := s.now()
	if m.Expired(now) {
		return
	}
	i, found := q.Find(m.ID)
	if found {
		return
	}
	body := m.Body
	m.Body = nil
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
			if _, ok := q.seen[k]; ok {
				delete(q.seen, k)
				w.delSeen(key, k)
			}
		}
	}
	w.putMsg(key, e, body)
	if m.ID.Compare(sh.lastID) > 0 {
		// A message from outside this store's history: keep ids increasing.
		sh.lastID = m.ID
		w.maxID = m.ID
	}
}

// Ack implements store.Queues.
func (s *Store) Ack(ctx context.Context, key string, id store.ID) (bool, error) {
	sh, err := s.lock(key)
	if err != nil {
		return false, err
	}
	var w wset
	ok, err := s.ack(sh, key, id, &w)
	if ferr := s.finish(sh, &w); ferr != nil {
		return false, ferr
	}
	return ok, err
}

func (s *Store) ack(sh *shard, key string, id store.ID, w *wset) (bool, error) {
	q := sh.queues[key]
	if q == nil {
		return false, nil
	}
	defer s.maybeForget(sh, key, q)
	i, found := q.Find(id)
	if !found {
		return false, nil
	}
	if err := s.writable(); err != nil {
		return false, err
	}
	now := s.now()
	e := q.RemoveAt(i)
	w.delMsg(key, e)
	s.messages.Add(-1)
	q.forget(key, e, true, now, w)
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
	var w wset
	n, err := s.clear(sh, key, &w)
	if ferr := s.finish(sh, &w); ferr != nil {
		return 0, ferr
	}
	return n, err
}

func (s *Store) clear(sh *shard, key string, w *wset) (int, error) {
	q := sh.queues[key]
	if q == nil {
		return 0, nil
	}
	if err := s.writable(); err != nil {
		return 0, err
	}
	n := q.Len()
	for _, e := range q.Live() {
		w.delMsg(key, e)
	}
	for k := range q.seen {
		w.delSeen(key, k)
	}
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
	var w wset
	ok, err := s.reply(sh, key, id, r, ttl, &w)
	if ferr := s.finish(sh, &w); ferr != nil {
		return false, ferr
	}
	return ok, err
}

func (s *Store) reply(sh *shard, key string, id store.ID, r store.Message, ttl time.Duration, w *wset) (bool, error) {
	q := sh.queues[key]
	if q == nil {
		return false, nil
	}
	defer s.maybeForget(sh, key, q)
	i, found := q.Find(id)
	if !found || !q.Live()[i].pending {
		return false, nil
	}
	if err := s.writable(); err != nil {
		return false, err
	}
	now := s.now()
	e := q.RemoveAt(i)
	w.delMsg(key, e)
	s.messages.Add(-1)
	q.forget(key, e, true, now, w)
	var expires time.Time
	if ttl > 0 {
		expires = now.Add(ttl)
	}
	rp := &reply{msg: store.Message{ID: id, ContentType: r.ContentType, ExpiresAt: expires}}
	sh.replies[replyKey{key, id}] = rp
	body := r.Body
	p := &body
	rp.body.Store(p)
	k := keyFor(key, id)
	w.muts = append(w.muts, mut{bReplies, k, encodeMsg(k, r.ContentType, "", expires, time.Time{}, body)})
	w.held = append(w.held, held{&rp.body, p})
	return true, nil
}

// TakeReply implements store.Queues.
func (s *Store) TakeReply(ctx context.Context, key string, id store.ID) (store.Message, bool, error) {
	sh, err := s.lock(key)
	if err != nil {
		return store.Message{}, false, err
	}
	var w wset
	m, ok, err := s.takeReply(sh, key, id, &w)
	if ferr := s.finish(sh, &w); ferr != nil {
		return store.Message{}, false, ferr
	}
	return m, ok, err
}

func (s *Store) takeReply(sh *shard, key string, id store.ID, w *wset) (store.Message, bool, error) {
	rk := replyKey{key, id}
	r, ok := sh.replies[rk]
	if !ok {
		return store.Message{}, false, nil
	}
	if err := s.writable(); err != nil {
		return store.Message{}, false, err
	}
	m := r.msg
	if !m.ExpiresAt.IsZero() && !s.now().Before(m.ExpiresAt) {
		delete(sh.replies, rk)
		w.muts = append(w.muts, mut{bucket: bReplies, key: keyFor(key, id)})
		return store.Message{}, false, nil
	}
	if p := r.body.Load(); p != nil {
		m.Body = *p
	} else {
		rec, err := s.readRecord(bReplies, keyFor(key, id))
		if err != nil {
			return store.Message{}, false, err
		}
		m.Body = rec.body
	}
	delete(sh.replies, rk)
	w.muts = append(w.muts, mut{bucket: bReplies, key: keyFor(key, id)})
	return m, true, nil
}
