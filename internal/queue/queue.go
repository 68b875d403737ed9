// Package queue is the core behind tunnels and the inbox: ordered message
// queues per key with a pending set, acknowledgements, replies and expiry,
// stored in a storage engine, plus long-poll waiters that an append wakes
// at once.
//
// A message is handed out under a lease (Options.Lease): Take and TakeAll
// return it reserved for the caller, who writes the answer and then
// settles the delivery; only then is the message removed (or marked
// pending). An answer that fails, or a settle that does not happen (the
// engine's answer lost, the process gone), leaves the message queued again
// in its place, at once or when its lease runs out. Consumption is thus
// exactly-once when all goes well and at-least-once when anything fails.
//
// Waiters are registered before the store is checked, so an append that
// lands between the check and the wait still wakes them; no polling loop is
// involved. On engines shared by several nodes (store.Fanout) appends and
// replies are also announced on a wake topic, so a long-poll held by one
// node is woken by a write on another; an engine that keeps track of the
// waiters parked on each queue (store.Parker) announces a write only when
// someone waits for it.
package queue

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/store"
)

// WakeTopic is the store.Fanout topic on which nodes announce writes to
// queue and reply keys.
const WakeTopic = store.WakeTopic

// ErrShuttingDown is returned by waits cut short by Shutdown. Callers answer
// as for "nothing arrived".
var ErrShuttingDown = errors.New("server shutting down")

// DefaultLease is how long a message handed out is reserved for the
// consumer it was handed to. It bounds how long an answer may take to
// write, and how long a message whose consumer or node died stays hidden.
// It is shorter than the Redis engine's round-trip timeout, so a take
// that Redis runs only after its node gave up on it leases for no time.
const DefaultLease = 4 * time.Second

// Options configures a Core. The queue's limits are its callers'
// (store.AppendOptions).
type Options struct {
	// Lease is how long a message handed out stays reserved for its
	// consumer; zero means DefaultLease.
	Lease time.Duration
}

// Validate reports the first setting that makes no sense and fills the
// settings left zero with their defaults.
func (o *Options) Validate() error {
	if o.Lease < 0 {
		return errors.New("delivery lease must not be negative")
	}
	capability.Default(&o.Lease, DefaultLease)
	return nil
}

// Core is the queue core. It is safe for concurrent use.
type Core struct {
	st  store.Engine
	fan store.Fanout // nil on single-node engines
	// parker, when the engine is one, announces writes to queues itself,
	// and only while a waiter is parked: the core announces replies only.
	parker store.Parker
	lease  time.Duration

	mu      sync.Mutex
	waiters map[string]*waitSet
	nwait   int
	// changed, when not nil, is closed at the next change of nwait; only
	// WaitForWaiters creates it, so the hot path allocates nothing.
	changed chan struct{}

	closing   chan struct{}
	closeOnce sync.Once
	unsub     func()

	m *metrics
}

type waitSet struct {
	sig *signal // closed and replaced on every wake
	n   int
}

// signal is one wake of a key: ch is closed when it happens, after at is
// set, so a woken waiter can tell how long it took to run again.
type signal struct {
	ch chan struct{}
	at time.Time
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

// New returns a core on st, its metrics on deps.Registry. If st implements
// store.Fanout, the core subscribes to WakeTopic; Shutdown ends the
// subscription.
func New(st store.Engine, opts Options, deps capability.Deps) (*Core, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	c := &Core{
		st:      st,
		lease:   opts.Lease,
		waiters: make(map[string]*waitSet),
		closing: make(chan struct{}),
	}
	c.m = newMetrics(deps.Registry, c, st)
	c.parker, _ = st.(store.Parker)
	if fan, ok := st.(store.Fanout); ok {
		c.fan = fan
		cancel, err := fan.Subscribe(context.Background(), WakeTopic, func(key []byte) { c.wake(string(key)) })
		if err != nil {
			return nil, err
		}
		c.unsub = cancel
	}
	return c, nil
}

// Shutdown ends every wait in progress (they report nothing found) and makes
// later waits return at once. It is idempotent and does not close the store.
func (c *Core) Shutdown(ctx context.Context) error {
	c.closeOnce.Do(func() {
		close(c.closing)
		if c.unsub != nil {
			c.unsub()
		}
	})
	return nil
}

// Waiting reports the number of waits in progress.
func (c *Core) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nwait
}

// WaitForWaiters blocks until exactly n waits are in progress, or ctx ends.
// It is the readiness signal for tests and tools that must know a long-poll
// is parked (or has let go) before they act.
func (c *Core) WaitForWaiters(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		if c.nwait == n {
			c.mu.Unlock()
			return nil
		}
		if c.changed == nil {
			c.changed = make(chan struct{})
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// addWaiting changes the wait count; c.mu must be held.
func (c *Core) addWaiting(d int) {
	c.nwait += d
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// watch registers interest in key and returns the channel that the next wake
// of key closes. release must be called once.
func (c *Core) watch(key string) (*signal, func()) {
	c.mu.Lock()
	ws := c.waiters[key]
	if ws == nil {
		ws = &waitSet{sig: newSignal()}
		c.waiters[key] = ws
	}
	ws.n++
	c.addWaiting(1)
	sig := ws.sig
	c.mu.Unlock()
	kind := kindOf(key)
	c.m.waiting(kind, 1)
	return sig, func() {
		c.mu.Lock()
		ws.n--
		c.addWaiting(-1)
		if ws.n == 0 && c.waiters[key] == ws {
			delete(c.waiters, key)
		}
		c.mu.Unlock()
		c.m.waiting(kind, -1)
	}
}

// wake wakes every local waiter of key.
func (c *Core) wake(key string) {
	c.mu.Lock()
	if ws := c.waiters[key]; ws != nil {
		ws.sig.at = time.Now()
		close(ws.sig.ch)
		ws.sig = newSignal()
	}
	c.mu.Unlock()
}

// announce wakes local waiters of queue key and, on shared engines, those
// of other nodes (an engine that is a store.Parker did that already, if
// anyone was parked).
func (c *Core) announce(key string) {
	c.wake(key)
	if c.fan != nil && c.parker == nil {
		c.publish(key)
	}
}

// announceReply is announce for a reply key, which no engine announces.
func (c *Core) announceReply(key string) {
	c.wake(key)
	if c.fan != nil {
		c.publish(key)
	}
}

// publish tells the other nodes that key was written.
func (c *Core) publish(key string) {
	// Best effort: a lost wake-up costs a waiter its timeout, never a
	// message, and the write itself already succeeded.
	_ = c.fan.Publish(context.Background(), WakeTopic, []byte(key))
}

// await runs try until it reports found, an error occurs, wait elapses, ctx
// ends or the core shuts down. try runs at least once, and runs again after
// each wake of key.
func (c *Core) await(ctx context.Context, key string, wait time.Duration, try func() (bool, error)) (bool, error) {
	if wait <= 0 {
		return try()
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var woke *signal // the wake that let the last try run, if any
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		sig, release := c.watch(key)
		found, err := try()
		if found || err != nil {
			release()
			if found && woke != nil {
				c.m.woken(kindOf(key), time.Since(woke.at))
			}
			return found, err
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-sig.ch:
			release()
			woke = sig
		case <-timer.C:
			release()
			return false, nil
		case <-ctx.Done():
			release()
			return false, ctx.Err()
		case <-c.closing:
			release()
			return false, ErrShuttingDown
		}
	}
}

// Append stores m at the end of key's queue and wakes its waiters.
func (c *Core) Append(ctx context.Context, key string, m store.Message, opts store.AppendOptions) (store.AppendResult, error) {
	res, err := c.st.Append(ctx, key, m, opts)
	kind := kindOf(key)
	if err != nil {
		var full *store.FullError
		if errors.As(err, &full) {
			c.m.refused(kind)
		}
		return res, err
	}
	if !res.Duplicate {
		c.m.appended(kind, res.Trimmed)
	}
	c.announce(key)
	return res, nil
}

// Take hands out one message of key as mode says, waiting up to wait for
// one to arrive, under a lease: the caller answers and then settles the
// delivery (Delivery.Settle). It checks ctx before each attempt, so a
// caller that has gone away is not handed a message.
func (c *Core) Take(ctx context.Context, key string, mode store.TakeMode, wait time.Duration) (Delivery, bool, error) {
	var l store.Lease
	var at time.Time
	end := time.Now().Add(wait) // of the wait, which a store.Parker records
	found, err := c.await(ctx, key, wait, func() (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		var ok bool
		var err error
		at = time.Now()
		// The take runs to its end even if the caller goes away meanwhile:
		// cut short, its lease would hide the message from everyone until
		// it ran out. A message taken for a caller gone is given back.
		if park := time.Until(end); c.parker != nil && park > 0 {
			l, ok, err = c.parker.TakeOrPark(context.WithoutCancel(ctx), key, mode, c.lease, park)
		} else {
			l, ok, err = c.st.Take(context.WithoutCancel(ctx), key, mode, c.lease)
		}
		if ok && err == nil && ctx.Err() != nil {
			s := c.settlement(key, []store.Lease{l}, at)
			s.Settle(context.WithoutCancel(ctx), false)
			return false, ctx.Err()
		}
		return ok, err
	})
	if !found || err != nil {
		return Delivery{}, false, err
	}
	return Delivery{Message: l.Message, Settlement: c.settlement(key, []store.Lease{l}, at)}, true, nil
}

// TakeAll hands out up to max queued messages of key under one lease, to
// be settled as one (Batch.Settle).
func (c *Core) TakeAll(ctx context.Context, key string, max int) (Batch, error) {
	at := time.Now()
	ls, err := c.st.TakeAll(ctx, key, max, c.lease)
	if err != nil || len(ls) == 0 {
		return Batch{}, err
	}
	ms := make([]store.Message, len(ls))
	for i, l := range ls {
		ms[i] = l.Message
	}
	return Batch{Messages: ms, Settlement: c.settlement(key, ls, at)}, nil
}

// Ack acknowledges (removes) message id of key.
func (c *Core) Ack(ctx context.Context, key string, id store.ID) (bool, error) {
	return c.st.Ack(ctx, key, id)
}

// Status reports where message id of key is.
func (c *Core) Status(ctx context.Context, key string, id store.ID) (store.State, error) {
	return c.st.Status(ctx, key, id)
}

// Len reports key's queue length (pending plus unseen).
func (c *Core) Len(ctx context.Context, key string) (int, error) {
	return c.st.Len(ctx, key)
}

// Clear removes every message of key.
func (c *Core) Clear(ctx context.Context, key string) (int, error) {
	return c.st.Clear(ctx, key)
}

func replyKey(key string, id store.ID) string {
	return key + "\x00reply\x00" + id.String()
}

// Reply acknowledges pending message id of key and stores r as its reply,
// waking whoever waits for it.
func (c *Core) Reply(ctx context.Context, key string, id store.ID, r store.Message, ttl time.Duration) (bool, error) {
	ok, err := c.st.Reply(ctx, key, id, r, ttl)
	if ok {
		c.announceReply(replyKey(key, id))
	}
	return ok, err
}

// TakeReply removes and returns the reply to message id of key, waiting up
// to wait for it to arrive.
func (c *Core) TakeReply(ctx context.Context, key string, id store.ID, wait time.Duration) (store.Message, bool, error) {
	var m store.Message
	found, err := c.await(ctx, replyKey(key, id), wait, func() (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		var ok bool
		var err error
		m, ok, err = c.st.TakeReply(ctx, key, id)
		return ok, err
	})
	return m, found, err
}

// kindOf is the metrics label of key: its namespace before the first '/'.
func kindOf(key string) string {
	if i := strings.IndexByte(key, '/'); i > 0 {
		return key[:i]
	}
	return "other"
}
