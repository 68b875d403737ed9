package index

import (
	"context"
	"time"

	"github.com/postern/postern/internal/store"
)

// call is one operation on one key, run under its shard's lock.
type call struct {
	x       *Index
	sh      *Shard
	key     string
	j       Journal
	now     time.Time
	checked bool // j.Writable passed
}

// begin starts an operation on key that may change the index, with a
// journal of kind k: it locks the key's shard, which finish releases.
func (x *Index) begin(key string, k Op) (call, error) {
	if x.closed.Load() {
		return call{}, store.ErrClosed
	}
	j := x.b.Begin(k)
	sh := x.shard(key)
	// The clock is read before the lock, which it would otherwise hold
	// for as long as a clock read takes on a virtual machine.
	now := x.now()
	sh.mu.Lock()
	return call{x: x, sh: sh, key: key, j: j, now: now}, nil
}

// end ends the operation c, whose own error is err: the backend releases
// the shard, and its error (the change could not be made durable) wins.
func (c *call) end(err error) error {
	if ferr := c.x.b.End(c.j, c.sh); ferr != nil {
		return ferr
	}
	return err
}

// look runs fn on key's queue (nil if it has none) under the shard lock,
// for operations that change nothing and record nothing.
func look[T any](x *Index, key string, fn func(q *queue, now time.Time) T) (T, error) {
	if x.closed.Load() {
		var zero T
		return zero, store.ErrClosed
	}
	sh := x.shard(key)
	now := x.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return fn(sh.queues[key], now), nil
}

// writable asks the journal, once per operation, whether changes may be
// made.
func (c *call) writable() error {
	if c.checked {
		return nil
	}
	if err := c.j.Writable(); err != nil {
		return err
	}
	c.checked = true
	return nil
}

// queue returns the call's queue, creating it when create is set.
func (c *call) queue(create bool) *queue {
	q := c.sh.queues[c.key]
	if q == nil && create {
		q = &queue{}
		c.sh.queues[c.key] = q
		c.x.queues.Add(1)
	}
	return q
}

// maybeForget drops an empty queue that remembers no dedup keys.
func (c *call) maybeForget(q *queue) {
	if q.Len() == 0 && len(q.seen) == 0 && c.sh.queues[c.key] == q {
		delete(c.sh.queues, c.key)
		c.x.queues.Add(-1)
	}
}

// forget drops the dedup bookkeeping for e when it is delivered or leaves
// the queue. When delivered is set, its dedup key is remembered until the
// end of its window, so that a resend is suppressed (and told e's id).
func (c *call) forget(q *queue, e *Entry, delivered bool) {
	k := e.msg.DedupKey
	if k == "" {
		return
	}
	// A newer message may carry the key (this one expired before it came):
	// the key is that one's.
	newer := q.queued[k] != nil && q.queued[k] != e
	if s, ok := q.seen[k]; ok && s.id.Compare(e.msg.ID) > 0 {
		newer = true
	}
	if q.queued[k] == e {
		delete(q.queued, k)
	}
	if delivered && !newer && e.dedupUntil.after(c.now) {
		until := e.dedupUntil.time()
		for _, old := range q.remember(k, e.msg.ID, until) {
			c.j.DelSeen(c.key, old)
		}
		c.j.PutSeen(c.key, k, until, e.msg.ID)
	}
}

// remove takes Live()[i] out of q; delivered says whether it was
// delivered (see forget).
func (c *call) remove(q *queue, i int, delivered bool) *Entry {
	e := q.RemoveAt(i)
	q.unlease(e, e.state)
	c.forget(q, e, delivered)
	c.j.DelMessage(c.key, e)
	c.x.messages.Add(-1)
	return e
}

// message returns e's message with its body.
func (c *call) message(e *Entry) (store.Message, error) {
	m, ok := e.message()
	if ok {
		return m, nil
	}
	var err error
	m.Body, err = c.j.ReadBody(c.key, m.ID)
	return m, err
}

// Append implements store.Queues.
func (x *Index) Append(ctx context.Context, key string, m store.Message, opts store.AppendOptions) (store.AppendResult, error) {
	c, err := x.begin(key, OpWrite)
	if err != nil {
		return store.AppendResult{}, err
	}
	res, err := c.append(m, opts)
	if err = c.end(err); err != nil {
		return store.AppendResult{}, err
	}
	return res, nil
}

func (c *call) append(m store.Message, opts store.AppendOptions) (store.AppendResult, error) {
	if err := c.writable(); err != nil {
		return store.AppendResult{}, err
	}
	q := c.queue(true)
	defer c.maybeForget(q)
	var expires time.Time
	if opts.TTL > 0 {
		expires = c.now.Add(opts.TTL)
	}
	for _, old := range q.bound(opts.DedupMax) {
		c.j.DelSeen(c.key, old)
	}
	if k := opts.DedupKey; k != "" {
		if e := q.queued[k]; e != nil && !e.msg.Expired(c.now) {
			if !opts.KeepFirst && q.available(e, c.now) {
				e.msg.ContentType = m.ContentType
				e.msg.ExpiresAt = expires
				c.j.PutMessage(c.key, e, m.Body)
			}
			return store.AppendResult{ID: e.msg.ID, Len: q.Len(), Duplicate: true}, nil
		}
		if s, ok := q.seen[k]; ok && c.now.Before(s.until) {
			return store.AppendResult{ID: s.id, Len: q.Len(), Duplicate: true}, nil
		}
	}
	if opts.Limit > 0 && q.Len() >= opts.Limit {
		return store.AppendResult{}, &store.FullError{Len: q.Len()}
	}
	c.sh.lastID = store.NextID(c.sh.lastID, c.now)
	e := &Entry{msg: store.Message{
		ID:          c.sh.lastID,
		ContentType: m.ContentType,
		DedupKey:    opts.DedupKey,
		ExpiresAt:   expires,
	}}
	if opts.DedupKey != "" {
		e.dedupUntil = nanoOf(c.now.Add(opts.DedupWindow))
	}
	q.Push(e)
	c.x.messages.Add(1)
	c.j.PutMessage(c.key, e, m.Body)
	c.j.Assigned(e.msg.ID)
	if k := opts.DedupKey; k != "" {
		q.setQueued(k, e)
		if _, ok := q.seen[k]; ok {
			delete(q.seen, k)
			c.j.DelSeen(c.key, k)
		}
	}
	res := store.AppendResult{ID: e.msg.ID}
	for opts.MaxLen > 0 && q.Len() > opts.MaxLen {
		c.remove(q, 0, false)
		res.Trimmed++
	}
	res.Len = q.Len()
	return res, nil
}

// taken is an answer of one message.
type taken struct {
	m  store.Message
	ok bool
}

// Ack implements store.Queues.
func (x *Index) Ack(ctx context.Context, key string, id store.ID) (bool, error) {
	c, err := x.begin(key, OpWrite)
	if err != nil {
		return false, err
	}
	ok, err := c.ack(id)
	if err = c.end(err); err != nil {
		return false, err
	}
	return ok, nil
}

func (c *call) ack(id store.ID) (bool, error) {
	q := c.queue(false)
	if q == nil {
		return false, nil
	}
	defer c.maybeForget(q)
	i, found := q.Find(id)
	if !found {
		return false, nil
	}
	if err := c.writable(); err != nil {
		return false, err
	}
	c.remove(q, i, true)
	return true, nil
}

// Status implements store.Queues.
func (x *Index) Status(ctx context.Context, key string, id store.ID) (store.State, error) {
	return look(x, key, func(q *queue, now time.Time) store.State {
		if q == nil {
			return store.StateNone
		}
		i, found := q.Find(id)
		if !found {
			return store.StateNone
		}
		switch e := q.Live()[i]; {
		case e.msg.Expired(now):
			return store.StateNone
		case q.pendingNow(e, now):
			return store.StatePending
		}
		return store.StateQueued
	})
}

// Len implements store.Queues.
func (x *Index) Len(ctx context.Context, key string) (int, error) {
	return look(x, key, func(q *queue, _ time.Time) int {
		if q == nil {
			return 0
		}
		return q.Len()
	})
}

// Clear implements store.Queues.
func (x *Index) Clear(ctx context.Context, key string) (int, error) {
	c, err := x.begin(key, OpWrite)
	if err != nil {
		return 0, err
	}
	n, err := c.clear()
	if err = c.end(err); err != nil {
		return 0, err
	}
	return n, nil
}

func (c *call) clear() (int, error) {
	q := c.queue(false)
	if q == nil {
		return 0, nil
	}
	if err := c.writable(); err != nil {
		return 0, err
	}
	n := q.Len()
	for _, e := range q.Live() {
		c.j.DelMessage(c.key, e)
	}
	for k := range q.seen {
		c.j.DelSeen(c.key, k)
	}
	c.x.messages.Add(int64(-n))
	delete(c.sh.queues, c.key)
	c.x.queues.Add(-1)
	return n, nil
}

// Reply implements store.Queues.
func (x *Index) Reply(ctx context.Context, key string, id store.ID, r store.Message, ttl time.Duration) (bool, error) {
	c, err := x.begin(key, OpWrite)
	if err != nil {
		return false, err
	}
	ok, err := c.reply(id, r, ttl)
	if err = c.end(err); err != nil {
		return false, err
	}
	return ok, nil
}

func (c *call) reply(id store.ID, r store.Message, ttl time.Duration) (bool, error) {
	q := c.queue(false)
	if q == nil {
		return false, nil
	}
	defer c.maybeForget(q)
	i, found := q.Find(id)
	if !found {
		return false, nil
	}
	if !q.pendingNow(q.Live()[i], c.now) {
		return false, nil
	}
	if err := c.writable(); err != nil {
		return false, err
	}
	c.remove(q, i, true)
	rp := &Reply{msg: store.Message{ID: id, ContentType: r.ContentType}}
	if ttl > 0 {
		rp.msg.ExpiresAt = c.now.Add(ttl)
	}
	c.sh.replies[replyKey{c.key, id}] = rp
	c.j.PutReply(c.key, rp, r.Body)
	return true, nil
}

// TakeReply implements store.Queues.
func (x *Index) TakeReply(ctx context.Context, key string, id store.ID) (store.Message, bool, error) {
	c, err := x.begin(key, OpWrite)
	if err != nil {
		return store.Message{}, false, err
	}
	t, err := c.takeReply(id)
	if err = c.end(err); err != nil {
		return store.Message{}, false, err
	}
	return t.m, t.ok, nil
}

func (c *call) takeReply(id store.ID) (taken, error) {
	rk := replyKey{c.key, id}
	r := c.sh.replies[rk]
	if r == nil {
		return taken{}, nil
	}
	if err := c.writable(); err != nil {
		return taken{}, err
	}
	m := r.msg
	expired := m.Expired(c.now)
	if !expired {
		var ok bool
		if m, ok = r.message(); !ok {
			var err error
			if m.Body, err = c.j.ReadReplyBody(c.key, id); err != nil {
				return taken{}, err
			}
		}
	}
	delete(c.sh.replies, rk)
	c.j.DelReply(c.key, id)
	if expired {
		return taken{}, nil
	}
	return taken{m, true}, nil
}
