package redisstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/postern/postern/internal/store"
)

// A delivery settled (Settle, delivered) is not sent to Redis by a call of
// its own: the store owes it to its queue, and the next script this store
// runs on that queue carries it in front of its own work (ARGV[3] of every
// queue script, see lua/queue.lua). A consumer that takes again right
// after an answer, the common loop, thus settles its last message and
// takes the next in one call. What no call carries within SettleDelay is
// sent by itself. The store's own calls see a settling at once; other
// nodes see the message under its lease until it is sent, SettleDelay at
// most while Redis answers. A settling owed when the process dies is
// lost: its message is handed out again once its lease runs out, which is
// the at-least-once a settling that fails gives anyway.

// DefaultSettleDelay is how long a delivery settled may wait for a call
// on its queue to carry it before it is sent by itself. A settling sent by
// itself is a write of its own, at a moment no request chose, so it mostly
// wakes Redis for itself alone, and a wake-up costs Redis more than the
// commands it reads. Measured on the scale benchmark (two nodes sharing
// one Redis, a 2-core machine at load 15-25, 12 pairs interleaved with
// 2 ms): the settlings sent by themselves fell from 0.17 to 0.08 per
// delivered message, Redis reads from a median of 0.58 to 0.45, and Redis
// CPU per delivered message by a median of 11% (from 2.48x to 2.01x one
// XADD's). Other nodes see a delivered message under its lease that much
// longer, and a node that dies loses that much more of its settlings (the
// messages are handed out again once their leases run out). 50 ms
// measured worse than 10 (redis/scale, 12 pairs interleaved in both
// orders, load 3-8): Redis CPU per delivered message 1.12x at 2 nodes and
// 1.28x at 4 (0.93x at 1), delivered msg/s 0.92x and 0.75x, and in every
// run 3-7 times the function calls per message at 2 and 4 nodes (more
// takes fell to the take function), though Redis read about 10% less often.
const DefaultSettleDelay = 10 * time.Millisecond

// owedSends bounds the settle scripts a send has in flight at once.
const owedSends = 32

// owedRetry bounds the pause between two attempts to send what is owed
// while Redis does not answer.
const owedRetry = 200 * time.Millisecond

// owed is what a store owes its queues. Its timer's goroutine sends what
// is owed; Close sends what is left and stops it.
type owed struct {
	delay time.Duration

	mu      sync.Mutex
	keys    map[string][]store.Lease
	flying  map[string]chan struct{} // keys the timer's send carries now, closed when their call ends
	timer   *time.Timer              // armed while keys is not empty and no send runs
	sending bool
	pause   time.Duration // before the next send, after a failed one
	closed  bool
	idle    *sync.Cond // signalled when a send ends
}

func newOwed(delay time.Duration) *owed {
	o := &owed{delay: delay, keys: map[string][]store.Lease{}, flying: map[string]chan struct{}{}}
	o.idle = sync.NewCond(&o.mu)
	return o
}

// carry removes what is owed on key and returns it as the scripts take
// it, with the leases, to give back if the call that carries them fails.
func (o *owed) carry(key string) (string, []store.Lease) {
	o.mu.Lock()
	ls := o.keys[key]
	if ls != nil {
		delete(o.keys, key)
	}
	o.mu.Unlock()
	if len(ls) == 0 {
		return "", nil
	}
	var b strings.Builder
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(l.ID.String())
		b.WriteByte(' ')
		b.WriteString(strconv.FormatInt(l.Token, 10))
		b.WriteByte(' ')
		b.WriteString(modeArg(l.Mode))
		b.WriteByte(' ')
		b.WriteString(carriedExpiry(l.Message))
	}
	return b.String(), ls
}

// carryPlain removes what is owed on key and returns it when plain
// commands may settle all of it at now (see plainSettle); otherwise it
// leaves it owed and reports false.
func (o *owed) carryPlain(key string, now time.Time) ([]store.Lease, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ls := o.keys[key]
	for _, l := range ls {
		if !plainSettle(l, now) {
			return nil, false
		}
	}
	if ls != nil {
		delete(o.keys, key)
	}
	return ls, true
}

// landed waits until a send of the timer's that carries what was owed on
// key has ended, so that the store's own next call on key runs after the
// settling (a call that overtook it would not see it).
func (o *owed) landed(ctx context.Context, key string) {
	o.mu.Lock()
	ch := o.flying[key]
	o.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
}

// carriedExpiry is the expiry the scripts take with a carried settling:
// the message's (ms, 0: never) when it has no dedup key, else "-" (the
// script reads its record).
func carriedExpiry(m store.Message) string {
	switch {
	case m.DedupKey != "":
		return "-"
	case m.ExpiresAt.IsZero():
		return "0"
	}
	return strconv.FormatInt(m.ExpiresAt.UnixMilli(), 10)
}

// owe adds ls to what is owed on key and makes sure a send is due.
func (o *owed) owe(key string, ls []store.Lease, send func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.keys[key] = append(o.keys[key], ls...)
	o.arm(send)
}

// arm starts the timer if nothing is due yet; o.mu must be held.
func (o *owed) arm(send func()) {
	if o.closed || o.sending || o.timer != nil {
		return
	}
	o.timer = time.AfterFunc(max(o.delay, o.pause), send)
}

// Settle implements store.Queues: a delivery is owed (see owed), a lease
// given back is settled at once, with what is owed on the queue.
func (s *Store) Settle(ctx context.Context, key string, ls []store.Lease, delivered bool) error {
	var mine []store.Lease
	for _, l := range ls {
		if l.Token != 0 {
			mine = append(mine, l)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	if s.closed.Load() {
		return store.ErrClosed
	}
	if delivered && s.owed.delay > 0 {
		s.owed.owe(key, mine, s.sendOwed)
		return nil
	}
	return s.settleNow(ctx, key, mine, delivered)
}

// settleNow runs the settle script for ls and what is owed on key.
func (s *Store) settleNow(ctx context.Context, key string, ls []store.Lease, delivered bool) error {
	args := make([]string, 3, 3+3*len(ls))
	args[0], args[1], args[2] = "0", s.wakeChannel, key
	if delivered {
		args[0] = "1"
	}
	for _, l := range ls {
		args = append(args, l.ID.String(), strconv.FormatInt(l.Token, 10), modeArg(l.Mode))
	}
	_, err := s.qexec(ctx, scSettle, key, s.qkeys(key), s.nowMS(), args...)
	return err
}

// sendOwed sends what is owed, one settle script per queue, all at once;
// the timer runs it. What cannot be sent is owed again (see giveBack),
// and sent after a pause.
func (s *Store) sendOwed() {
	o := s.owed
	o.mu.Lock()
	o.timer = nil
	if o.sending || o.closed {
		o.mu.Unlock()
		return
	}
	o.sending = true
	o.mu.Unlock()

	failed := s.sendAllOwed()

	o.mu.Lock()
	defer o.mu.Unlock()
	o.sending = false
	if failed {
		o.pause = min(max(2*o.pause, 10*time.Millisecond), owedRetry)
	} else {
		o.pause = 0
	}
	o.idle.Broadcast()
	if len(o.keys) > 0 {
		o.arm(s.sendOwed)
	}
}

// sendAllOwed sends what is owed now on every queue and reports whether
// a send failed.
func (s *Store) sendAllOwed() (failed bool) {
	o := s.owed
	o.mu.Lock()
	keys := make([]string, 0, len(o.keys))
	for k := range o.keys {
		keys = append(keys, k)
	}
	o.mu.Unlock()
	var wg sync.WaitGroup
	var bad atomic.Bool
	slots := make(chan struct{}, owedSends)
	for _, k := range keys {
		slots <- struct{}{}
		ch := make(chan struct{})
		o.mu.Lock()
		o.flying[k] = ch
		o.mu.Unlock()
		wg.Go(func() {
			defer func() {
				o.mu.Lock()
				delete(o.flying, k)
				o.mu.Unlock()
				close(ch)
				<-slots
			}()
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			defer cancel()
			if ls, plain := o.carryPlain(k, s.now()); plain {
				// Leases plain commands settle (plainSettle) only.
				if len(ls) == 0 {
					return
				}
				lk := s.leanKeys(k)
				b := s.c.B()
				cmds := s.settleCmds(b, lk, ls)
				settles := len(cmds)
				rs := s.c.DoMulti(ctx, append(cmds, b.Xlen().Key(lk.s).Build())...)
				rest := s.settled(ctx, k, ls, settles, rs)
				if s.owedFailed(rs) {
					bad.Store(true)
					return
				}
				if n, _ := rest[0].AsInt64(); n == 0 {
					// Emptied, and no take of this node's followed: the
					// settle function sets the queue's counts right
					// (see lean.go), so that its keys get their TTLs.
					if _, err := s.exec(ctx, scSettle, s.qkeys(k), s.nowMS(), "", "1", s.wakeChannel, k); err != nil {
						bad.Store(true)
					}
				}
				return
			}
			carried, ls := o.carry(k)
			if carried == "" {
				return
			}
			_, err := s.exec(ctx, scSettle, s.qkeys(k), s.nowMS(), carried, "1", s.wakeChannel, k)
			s.giveBack(k, ls, err)
			if err != nil {
				bad.Store(true)
			}
		})
	}
	wg.Wait()
	return bad.Load()
}

// owedFailed reports whether a command of rs failed.
func (s *Store) owedFailed(rs []rueidis.RedisResult) bool {
	for _, r := range rs {
		if e := r.Error(); e != nil && !redisErrIs(e, "NOGROUP") {
			return true
		}
	}
	return false
}

// forgetExpired drops, from ls, the leases that ran out by now: a
// settling that could not be sent until then leaves its message to be
// handed out again (at-least-once), and what is owed stays bounded while
// Redis is away.
func forgetExpired(ls []store.Lease, now time.Time) []store.Lease {
	out := ls[:0]
	for _, l := range ls {
		if now.Before(l.Deadline) {
			out = append(out, l)
		}
	}
	return out
}

// qexec runs sc, a queue script on key, carrying what is owed on key; if
// the call fails, that is owed again (settling is idempotent).
func (s *Store) qexec(ctx context.Context, sc *luaFunc, key string, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	s.owed.landed(ctx, key)
	carried, ls := s.owed.carry(key)
	res, err := s.exec(ctx, sc, keys, now, append([]string{carried}, args...)...)
	s.giveBack(key, ls, err)
	return res, err
}

// qwrite is qexec for a write a client is told about (see write).
func (s *Store) qwrite(ctx context.Context, sc *luaFunc, key string, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	s.owed.landed(ctx, key)
	carried, ls := s.owed.carry(key)
	res, err := s.write(ctx, sc, keys, now, append([]string{carried}, args...)...)
	s.giveBack(key, ls, err)
	return res, err
}

// qexecWrite is qexec for a write whose outcome a client must know (see
// execWrite).
func (s *Store) qexecWrite(ctx context.Context, sc *luaFunc, key string, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	s.owed.landed(ctx, key)
	carried, ls := s.owed.carry(key)
	res, err := s.execWrite(ctx, sc, keys, now, append([]string{carried}, args...)...)
	s.giveBack(key, ls, err)
	return res, err
}

// giveBack owes ls on key again after a call that carried them failed
// (err not nil), those whose leases have not run out.
func (s *Store) giveBack(key string, ls []store.Lease, err error) {
	if err == nil || len(ls) == 0 || errors.Is(err, store.ErrClosed) {
		return
	}
	if ls = forgetExpired(ls, s.now()); len(ls) > 0 {
		s.owed.owe(key, ls, s.sendOwed)
	}
}

// closeOwed stops the timer, waits for a send under way and sends what
// is still owed, once; Close calls it before the client closes.
func (s *Store) closeOwed() {
	o := s.owed
	o.mu.Lock()
	o.closed = true
	if o.timer != nil {
		o.timer.Stop()
		o.timer = nil
	}
	for o.sending {
		o.idle.Wait()
	}
	n := len(o.keys)
	o.mu.Unlock()
	if n > 0 {
		s.sendAllOwed()
	}
}
