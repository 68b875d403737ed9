package queue

import (
	"context"
	"errors"
	"time"

	"github.com/postern/postern/internal/store"
)

// Delivery is a message Take handed out, reserved for its consumer until
// Settle, or until its lease runs out (Deadline).
type Delivery struct {
	store.Message
	Settlement
}

// Batch is the messages TakeAll handed out, reserved for their consumer
// until Settle, or until their lease runs out (Deadline).
type Batch struct {
	Messages []store.Message
	Settlement
}

// Settlement is what ends a hand-out: Settle, once the answer to the
// consumer was written or failed.
type Settlement struct {
	// Deadline is when the lease runs out, on this node's clock (the
	// lease, counted from before the take): the answer must be written,
	// and the delivery settled, before it. Zero when there is nothing to
	// settle (a pending message handed out again).
	Deadline time.Time

	c      *Core
	key    string
	leases []store.Lease // nil: nothing to settle
	again  int           // pending messages handed out again
}

// settlement is the settlement of ls, taken at at.
func (c *Core) settlement(key string, ls []store.Lease, at time.Time) Settlement {
	s := Settlement{c: c, key: key, again: len(ls)}
	for _, l := range ls {
		if l.Token != 0 {
			s.leases, s.again = ls, 0
			s.Deadline = at.Add(c.lease)
			break
		}
	}
	return s
}

// settleRetry bounds the pause between two attempts to settle while the
// engine is unavailable.
const settleRetry = 500 * time.Millisecond

// Settle ends the hand-out. delivered: the answer reached the consumer, and
// the messages are removed (or pending from then on, for a pending take).
// Not delivered: they are queued again at once, in their places, and
// waiters are woken for them.
//
// While the engine is unavailable, or its answer is lost, Settle tries a
// delivery again until the lease runs out (the settling is idempotent), so
// that a short outage costs no redelivery. An error means it did not
// happen: a delivered message is then handed out again once its lease runs
// out (at-least-once); one not delivered comes back then too. ctx should
// outlive the consumer's request: settling is what keeps a delivery from
// being lost or repeated.
func (s *Settlement) Settle(ctx context.Context, delivered bool) error {
	c := s.c
	if c == nil {
		return nil
	}
	kind := kindOf(s.key)
	if len(s.leases) == 0 {
		if delivered && s.again > 0 {
			c.m.settled(kind, s.again, true)
		}
		return nil
	}
	pause := 10 * time.Millisecond
	for {
		err := c.st.Settle(ctx, s.key, s.leases, delivered)
		if err == nil {
			c.m.settled(kind, len(s.leases), delivered)
			if !delivered {
				c.announce(s.key)
			}
			return nil
		}
		// A message not delivered comes back when its lease runs out
		// anyway: only a delivery is worth waiting for.
		retry := delivered && (errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrOutcomeUnknown))
		if !retry || !time.Now().Add(pause).Before(s.Deadline) {
			c.m.settleFailed(kind)
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			c.m.settleFailed(kind)
			return err
		}
		pause = min(2*pause, settleRetry)
	}
}
