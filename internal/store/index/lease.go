package index

import (
	"context"
	"time"

	"github.com/postern/postern/internal/store"
)

// A message handed out stays in its place in the queue, in a leased state
// with the lease kept in its queue; nothing is recorded until the lease is
// settled. Takers skip it until the lease runs out, and then take it as
// queued: no sweep is needed to bring it back, and after a restart of a
// durable engine it is simply queued.

// grant starts a lease of d from now, with a token new in the shard.
func (c *call) grant(d time.Duration) (lease, time.Time) {
	c.sh.tokens++
	until := c.now.Add(d)
	return lease{token: c.sh.tokens, until: nanoOf(until)}, until
}

// Take implements store.Queues.
func (x *Index) Take(ctx context.Context, key string, mode store.TakeMode, d time.Duration) (store.Lease, bool, error) {
	c, err := x.begin(key, OpQuiet)
	if err != nil {
		return store.Lease{}, false, err
	}
	l, ok, err := c.take(mode, d)
	if err = c.end(err); err != nil {
		return store.Lease{}, false, err
	}
	return l, ok, nil
}

func (c *call) take(mode store.TakeMode, d time.Duration) (store.Lease, bool, error) {
	q := c.queue(false)
	if q == nil {
		return store.Lease{}, false, nil
	}
	defer c.maybeForget(q)
	if mode == store.TakePending {
		for _, e := range q.Live() {
			if q.pendingNow(e, c.now) && !e.msg.Expired(c.now) {
				// Handing the pending message out again changes nothing.
				m, err := c.message(e)
				c.j.Gave(c.key, e)
				return store.Lease{Message: m, Mode: mode}, err == nil, err
			}
		}
	}
	ls, err := c.takeN(mode, 1, d)
	if len(ls) == 0 || err != nil {
		return store.Lease{}, false, err
	}
	return ls[0], true, nil
}

// takeN leases up to n (n <= 0: all) available messages in mode, oldest
// first, removing the expired ones it passes.
func (c *call) takeN(mode store.TakeMode, n int, d time.Duration) ([]store.Lease, error) {
	q := c.queue(false)
	if q == nil {
		return nil, nil
	}
	st := leased
	if mode == store.TakePending {
		st = leasedPending
	}
	var out []store.Lease
	var l lease
	var until time.Time
	for i := 0; i < q.Len() && (n <= 0 || len(out) < n); {
		e := q.Live()[i]
		expired := e.msg.Expired(c.now)
		if !expired && !q.available(e, c.now) {
			i++
			continue
		}
		// Check writability only when about to hand something out, so
		// that polling an empty queue works while writes are refused.
		if err := c.writable(); err != nil {
			return nil, err
		}
		if expired {
			c.remove(q, i, false)
			continue
		}
		m, err := c.message(e)
		if err != nil {
			return nil, err
		}
		if out == nil {
			l, until = c.grant(d)
		}
		q.lease(e, st, l)
		c.j.Gave(c.key, e)
		out = append(out, store.Lease{Message: m, Mode: mode, Token: l.token, Deadline: until})
		i++
	}
	return out, nil
}

// TakeAll implements store.Queues.
func (x *Index) TakeAll(ctx context.Context, key string, max int, d time.Duration) ([]store.Lease, error) {
	c, err := x.begin(key, OpQuiet)
	if err != nil {
		return nil, err
	}
	q := c.queue(false)
	ls, err := c.takeN(store.TakeDelete, max, d)
	if q != nil {
		c.maybeForget(q)
	}
	if err = c.end(err); err != nil {
		return nil, err
	}
	return ls, nil
}

// Settle implements store.Queues.
func (x *Index) Settle(ctx context.Context, key string, ls []store.Lease, delivered bool) error {
	c, err := x.begin(key, OpQuiet)
	if err != nil {
		return err
	}
	return c.end(c.settle(ls, delivered))
}

func (c *call) settle(ls []store.Lease, delivered bool) error {
	q := c.queue(false)
	if q == nil {
		return nil
	}
	defer c.maybeForget(q)
	for _, l := range ls {
		if l.Token == 0 {
			continue
		}
		i, found := q.Find(l.ID)
		if !found {
			continue
		}
		e := q.Live()[i]
		held := (e.state == leased || e.state == leasedPending) && q.leases[e].token == l.Token
		switch {
		case !delivered && held:
			q.unlease(e, queued)
		case delivered && (held || q.available(e, c.now)):
			if err := c.writable(); err != nil {
				return err
			}
			c.deliver(q, i, l.Mode)
		}
	}
	return nil
}

// deliver settles Live()[i] as delivered in mode.
func (c *call) deliver(q *queue, i int, mode store.TakeMode) {
	if mode == store.TakeDelete {
		c.remove(q, i, true)
		return
	}
	e := q.Live()[i]
	q.unlease(e, pending)
	c.j.PutPending(c.key, e)
	c.forget(q, e, true)
}
