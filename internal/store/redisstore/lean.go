package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/postern/postern/internal/store"
)

// The lean path runs the common operations of a tunnel, an append without
// dedup key or expiry and a take in delete mode, and the settling of such
// a take, as plain commands, which rueidis pipelines, instead of
// functions: a function call has a fixed cost in Redis that is several
// times that of the commands it runs. It keeps the layout of the functions
// (see lua/queue.lua), on the same keys, so that both run on one queue at
// once, and leaves to the functions whatever needs more than one command
// to be atomic:
//
//   - An append is one MULTI: XLEN, XADD, HINCRBY of H.f (the count of
//     messages without expiry, which decides the keys' TTLs), HMGET of the
//     meta. A queue found full (Limit), longer than MaxLen, new, or whose
//     keys had a TTL is then handed to a function (leanfix), which removes
//     the refused message again unless it was handed out already, trims,
//     and applies the meta; a waiter parked on the queue is woken.
//   - A take is one round trip: XREADGROUP on the stream's consumer group
//     gives a new entry to one caller only, as a consumer named after the
//     lease token and the node, whose pending entry in the group is the
//     lease. The functions read those entries as leases, and move the
//     group's cursor past every entry they hand out, so that whatever lies
//     past it was never handed out. The same round trip reads the meta and
//     looks for leases run out (or given back, scored 0) in L, and among
//     the group's pending entries (XPENDING) once in pelRecheck: when
//     there is one, when the queue may hold messages with an expiry (H.x, which the
//     functions keep, is not 0), or when nothing new is there, the take is
//     the function's, which scans the queue from its start (and parks a
//     waiter when it finds nothing); a message read and not handed out is
//     given back, for the function to hand out in its place.
//   - A delivery of a lean lease is settled with XDEL and XGROUP
//     DELCONSUMER (in that order: a message never seems free on the way),
//     carried by the next lean call on its queue, or sent by itself. H.f
//     is left as it is: it may count more messages than the queue holds,
//     which keeps keys without TTL longer, never shorter; the take and
//     settle functions set it right whenever the queue is empty.
//   - A delivery of a lease the take function handed out in delete mode,
//     on a stream entry whose record is there and has neither expiry nor
//     dedup key, is settled likewise with XDEL and ZREM of its lease in L
//     (the function marks such a lease by its token, see plainSettle).
//     Before, the delivery of any lease a function took was owed to a
//     function, so the next take on the queue was the take function's,
//     whose lease was again owed to one: one take left to the function
//     (the park of an empty queue, a new queue) made a chain of them.
//     Measured on redis/scale (18 A/B pairs, load 3.6-12, medians of
//     the pairs' ratios): function calls per delivered message 0.53x,
//     0.47x and 0.47x at 1, 2 and 4 nodes (fewer in 17, 18 and 16 pairs);
//     Redis CPU per delivered message, as a ratio of one XADD's, 0.87x,
//     0.93x and 0.88x (pairs from 0.43x to 1.57x); node CPU per delivered
//     message unchanged (0.94x, 1.00x, 0.95x). A take function call costs
//     Redis about 65 µs there.
//
// Dedup keys, expiry, pending mode, TakeAll, a lease given back or run
// out, Ack, Status, Len, Clear, replies and replicated acknowledgement
// (Options.WaitReplicas) stay with the functions.
//
// Tried and left: a group commit of a queue's lean calls on one node (a
// call that finds one under way waits, and goes with the next): on the
// scale benchmark half the calls found one under way, but with two callers
// per queue and node every batch held one call, so it only serialized
// them. A consumer kept per node instead of one per lease, settled with
// XACK, measured no cheaper in Redis, and a function of an older version
// that ends a lease with XGROUP DELCONSUMER would end every lease of it.
// The append's MULTI stays: without it Redis made 0.35-0.5 reads per
// append instead of 0.2, and spent more CPU on them; a take in a MULTI
// likewise read less in one round of five A/B pairs, not in the next.
// What fewer commands could pay is bounded: the bare XADD alone (not a valid
// append) against the six cost Redis 0.65x the CPU per produce in
// redis/produce (4 µs less of 12; 6 interleaved pairs, load 8-13) and
// 0.86x the CPU per request in all (pairs 0.75x to 1.23x), and 0.77x and
// 0.95x on one node loaded by wrk (5 pairs, load 6-8); a valid append
// keeps XADD, HINCRBY and HMGET (f must never count too few, the wake
// needs w) and XLEN (the length it answers and checks limits by), and
// MULTI and EXEC make them one: without, an XADD whose HINCRBY fails
// after it (OOM, a connection cut mid-batch), or went before it and was
// reset by a function that found the queue empty, leaves f too low.
// The node's cost is in the round trip itself (the connection's writes
// and reads, the handler's wait, net/http's read ahead while a handler
// waits): the same node spent 31-37 µs per produce on the memory engine,
// 58-66 on Redis.
// Left untried, as unsafe: trimming delivered entries in batches (XTRIM
// MINID) instead of XDEL leaves them behind the group's cursor with no
// pending entry, which the functions of every version read as free and
// hand out again (and XLEN counts), and skipping the append's HINCRBY of
// H.f while f is known to be high lets a function on another node that
// finds the queue empty reset f to 0 under it, giving the keys of a
// message without expiry a TTL. Also left: a take that finds nothing new
// parking with plain commands instead of the take function. The function
// costs Redis about 23 µs a call on a queue with nothing free (measured
// alone), and the scale benchmark makes 0.02-0.03 function calls per
// delivered message at 2 and 4 nodes, so it would save about 1 µs of
// Redis CPU per message, for a park that must also delete the consumer
// XREADGROUP made and set H.f right when the queue is empty.
//
// Redis' own stream-node-max-bytes is no lever either: at 512 or 1024
// instead of 4096 (2-3 entries of 256-byte messages a node, not about 13)
// Redis CPU per delivered message at 2 nodes fell to 0.91x and 0.94x of
// one XADD's (medians of 16 and 22 interleaved pairs of redis/scale, load
// 1-10), but in µs only to 0.997x and 0.98x: the XADD of the baseline got
// dearer. At 0 (100 entries a node) it rose to 1.05x, at 200 (one) 1.11x.

// leanGroup is the consumer group of a queue's stream (GROUP in
// lua/queue.lua).
const leanGroup = "postern"

// leanSettleMargin is how much of a lean lease must be left for its
// delivery to be settled with plain commands; later, a function settles it,
// which leaves a message another lease holds now as it is.
const leanSettleMargin = time.Second

// Lease tokens end in three digits the node chooses: below 250 for a lease
// a function took, 250 to 499 for a lease the take function took on a
// message it found plain commands may settle (a delete-mode take of a
// stream entry whose record is there, without expiry or dedup key; see
// lua/take.lua), 500 and above for a lease the lean path took whose
// delivery plain commands may settle (see plainSettle).
const (
	funcPlainTokenBase = 250
	leanTokenBase      = 500
)

// plainSettle reports whether the delivery of l may be settled with plain
// commands at now: a delete-mode take's, by the lean path (on a message
// without dedup key whose record is its stream entry's) or by the take
// function on a message it marked so, with leanSettleMargin left.
func plainSettle(l store.Lease, now time.Time) bool {
	return l.Mode == store.TakeDelete && l.Token%1000 >= funcPlainTokenBase && l.DedupKey == "" &&
		(isLeanLease(l.Token) || l.ExpiresAt.IsZero()) &&
		now.Before(l.Deadline.Add(-leanSettleMargin))
}

// isLeanLease reports whether the lease token t is one of the lean
// path's, held by a group consumer (see consumer); otherwise a lease
// plainSettle allows is the take function's, held in L.
func isLeanLease(t int64) bool { return t%1000 >= leanTokenBase }

// leanKeys are the keys of a queue the lean path uses.
type leanKeys struct{ s, m, h, l string }

// leanKeys cuts the four keys from one string, one allocation: the hot
// path builds them for every call (qkeys, all eight, costs three).
func (s *Store) leanKeys(key string) leanKeys {
	p, t := s.prefix, tag(key)
	n := len(p) + len(t) + 5 // "q{" t "}:" and a one-byte suffix
	all := p + "q{" + t + "}:s" + p + "q{" + t + "}:m" + p + "q{" + t + "}:h" + p + "q{" + t + "}:l"
	return leanKeys{s: all[:n], m: all[n : 2*n], h: all[2*n : 3*n], l: all[3*n:]}
}

// leanAppend is Append on the lean path; done is false when the append is
// not one it makes, and nothing was sent.
func (s *Store) leanAppend(ctx context.Context, key string, m store.Message, opts store.AppendOptions) (res store.AppendResult, done bool, err error) {
	if s.functionsOnly || s.waitReplicas > 0 || opts.DedupKey != "" || opts.TTL > 0 {
		return res, false, nil
	}
	if s.closed.Load() {
		return res, true, store.ErrClosed
	}
	// What the store owes the queue is settled first, so that the
	// length is the queue's as this node sees it.
	s.owed.landed(ctx, key)
	owed, plain := s.owed.carryPlain(key, s.now())
	if !plain {
		return res, false, nil // the function carries them
	}
	k := s.leanKeys(key)
	b := s.c.B()
	cmds := s.settleCmds(b, k, owed)
	settles := len(cmds)
	rs := s.c.DoMulti(ctx, append(cmds,
		b.Multi().Build(),
		b.Xlen().Key(k.s).Build(),
		b.Xadd().Key(k.s).Id("*").FieldValue().FieldValue("r", encode(0, 0, "", m.ContentType, m.Body)).Build(),
		b.Hincrby().Key(k.h).Field("f").Increment(1).Build(),
		b.Hmget().Key(k.h).Field("e", "u", "w").Build(),
		b.Exec().Build())...)
	rs = s.settled(ctx, key, owed, settles, rs)
	for _, r := range rs[:5] {
		if err := r.Error(); err != nil {
			return res, true, s.outcome(r, s.wrap(ctx, err))
		}
	}
	ex := rs[5]
	if err := ex.Error(); err != nil {
		return res, true, s.outcome(ex, s.wrap(ctx, err))
	}
	arr, err := ex.ToArray()
	if err != nil || len(arr) != 4 {
		return res, true, errBadReply
	}
	before, err1 := arr[0].AsInt64()
	idText, err2 := arr[1].ToString()
	meta, err3 := arr[3].ToArray()
	if err1 != nil || err2 != nil || err3 != nil || len(meta) != 3 {
		return res, true, errBadReply
	}
	if res.ID, err = store.ParseID(idText); err != nil {
		return res, true, errBadReply
	}
	e, _ := meta[0].ToString()
	u, _ := meta[1].ToString()
	w, _ := meta[2].ToString()
	res.Len = int(before) + 1
	restored := strings.Contains(u, "b") // older versions' restored set counts too
	full := opts.Limit > 0 && (int(before) >= opts.Limit || restored)
	long := opts.MaxLen > 0 && (res.Len > opts.MaxLen || restored)
	if e != "-1" || full || long || restored {
		refused, limit, maxLen := "", "0", "0"
		if full {
			refused, limit = idText, strconv.Itoa(opts.Limit)
		}
		if long {
			maxLen = strconv.Itoa(opts.MaxLen)
		}
		fix, err := s.exec(ctx, scLeanFix, s.qkeys(key), s.nowMS(), "", refused, limit, maxLen)
		if err != nil {
			// The message is stored, whatever became of the fix: the
			// client is told the outcome is not known, as for a lost
			// answer, never a failure it would take for nothing stored.
			why := strings.TrimPrefix(err.Error(), store.ErrUnavailable.Error()+": ")
			return res, true, fmt.Errorf("%w: %s", store.ErrOutcomeUnknown, why)
		}
		arr, err := fix.ToArray()
		if err != nil || len(arr) != 3 {
			return res, true, errBadReply
		}
		removed, _ := arr[0].AsInt64()
		n, _ := arr[1].AsInt64()
		trimmed, _ := arr[2].AsInt64()
		res.Len, res.Trimmed = int(n), int(trimmed)
		if removed == 1 {
			return store.AppendResult{}, true, &store.FullError{Len: int(n)}
		}
	}
	if w != "" && w != "0" {
		if til, err := strconv.ParseInt(w, 10, 64); err == nil && til > s.nowMS() {
			// The park is forgotten before the wake-up is published:
			// a waiter that parks in between is woken too.
			s.c.DoMulti(ctx,
				b.Hset().Key(k.h).FieldValue().FieldValue("w", "0").Build(),
				b.Publish().Channel(s.wakeChannel).Message(key).Build())
		}
	}
	return res, true, nil
}

// leanTake is a delete-mode take on the lean path; done is false when the
// take is left to the function (see the comment at the top).
//
// When done is false, fb says what the take function is to do first.
func (s *Store) leanTake(ctx context.Context, key string, d time.Duration) (l store.Lease, ok, done bool, fb fallback, err error) {
	if s.functionsOnly {
		return l, false, false, fallback{}, nil
	}
	if s.closed.Load() {
		return l, false, true, fallback{}, store.ErrClosed
	}
	s.owed.landed(ctx, key)
	owed, plain := s.owed.carryPlain(key, s.now())
	if !plain {
		return l, false, false, fallback{}, nil // the function carries them
	}
	k := s.leanKeys(key)
	b := s.c.B()
	now := s.now()
	tok, t, deadline := s.leanToken(d)
	consumer := s.consumer(tok)
	cmds := s.settleCmds(b, k, owed)
	settles := len(cmds)
	cmds = append(cmds,
		b.Hmget().Key(k.h).Field("u", "x").Build(),
		b.Zrange().Key(k.l).Min("-inf").Max("("+strconv.FormatInt((now.UnixMilli()+1)*1000, 10)).Byscore().Limit(0, 1).Build())
	checkPEL := s.pelWatch.due(key, now)
	if checkPEL {
		cmds = append(cmds, b.Arbitrary("XPENDING").Keys(k.s).Args(leanGroup).Build())
	}
	cmds = append(cmds, b.Xreadgroup().Group(leanGroup, consumer).Count(1).Streams().Key(k.s).Id(">").Build())
	rs := s.settled(ctx, key, owed, settles, s.c.DoMulti(ctx, cmds...))
	for _, r := range rs[:2] {
		if e := r.Error(); e != nil && !rueidis.IsRedisNil(e) {
			return l, false, true, fallback{}, s.wrap(ctx, e)
		}
	}
	u, x := queueFlags(rs[0])
	expired, _ := rs[1].AsStrSlice()
	ranOut := len(expired) > 0
	if checkPEL {
		ran, next := s.pelRanOut(rs[2], now)
		if ran {
			ranOut = true
		} else if rs[2].Error() == nil {
			s.pelWatch.checked(key, now, next)
		}
	}
	id, rec, err := readEntry(rs[len(rs)-1]) // XREADGROUP's, the last
	if err != nil {
		if redisErrIs(err, "NOGROUP") {
			return l, false, false, fallback{group: true}, nil
		}
		if errors.Is(err, errBadReply) {
			return l, false, true, fallback{}, err
		}
		return l, false, true, fallback{}, s.wrap(ctx, err)
	}
	giveBack := func() {
		s.c.Do(ctx, b.Arbitrary("XGROUP", "DELCONSUMER").Keys(k.s).Args(leanGroup, consumer).Build())
	}
	if id == "" || x != "0" || strings.Contains(u, "b") || ranOut {
		// XREADGROUP made the consumer even if it read nothing.
		return l, false, false, fallback{readPast: id, consumer: consumer}, nil
	}
	fromM := false
	if strings.Contains(u, "o") || !strings.Contains(u, "n") {
		// Its record may have been replaced in place, or be an older
		// version's.
		r, err := s.c.Do(ctx, b.Hget().Key(k.m).Field(id).Build()).ToString()
		switch {
		case err == nil:
			rec, fromM = r, true
		case !rueidis.IsRedisNil(err):
			giveBack()
			return l, false, true, fallback{}, s.wrap(ctx, err)
		}
	}
	msg, derr := decode(id, rec)
	if rec == "" || derr != nil || msg.Expired(s.now()) {
		// No record (the function drops it) or expired (the
		// function removes it).
		return l, false, false, fallback{readPast: id, consumer: consumer}, nil
	}
	if fromM {
		// A record replaced in place: its settling is the function's,
		// under a token that says so.
		ftok, ft, fdl := s.token(d)
		fc := s.consumer(ftok)
		rs := s.c.DoMulti(ctx,
			b.Xclaim().Key(k.s).Group(leanGroup).Consumer(fc).MinIdleTime("0").Id(id).Justid().Build(),
			b.Arbitrary("XGROUP", "DELCONSUMER").Keys(k.s).Args(leanGroup, consumer).Build())
		if err := rs[0].Error(); err != nil {
			return l, false, true, fallback{}, s.wrap(ctx, err)
		}
		t, deadline = ft, fdl
	}
	s.pelWatch.leased(key, deadline)
	return store.Lease{Message: msg, Mode: store.TakeDelete, Token: t, Deadline: deadline}, true, true, fallback{}, nil
}

// queueFlags reads the answer of a lean take's HMGET of a queue's u and x
// fields ("" for one that is missing).
func queueFlags(r rueidis.RedisResult) (u, x string) {
	meta, _ := r.ToArray()
	if len(meta) == 2 {
		u, _ = meta[0].ToString()
		x, _ = meta[1].ToString()
	}
	return u, x
}

// fallback is what a lean take leaves to the take function.
type fallback struct {
	// readPast is the id of a message the take read past the group's
	// cursor and did not hand out ("": none), for the function to make
	// visible (see lua/take.lua).
	readPast string
	// consumer is the group consumer the take made, for the function to
	// delete ("": none), with the lease it holds.
	consumer string
	// group is true when the stream has no consumer group, for the
	// function to create.
	group bool
}

// consumer is the name of the group consumer that holds the lean lease
// tok: the token, then the node's own tag, so that two nodes never share
// one.
func (s *Store) consumer(tok string) string { return tok + ":" + s.nodeTag }

// pelRanOut reports whether the summary of XPENDING on the group names a
// consumer whose lease ran out at now, and otherwise the earliest
// deadline of those it names (zero: none).
func (s *Store) pelRanOut(r rueidis.RedisResult, now time.Time) (ranOut bool, next time.Time) {
	arr, err := r.ToArray()
	if err != nil || len(arr) < 4 {
		return false, next
	}
	cs, _ := arr[3].ToArray()
	limit := (now.UnixMilli() + 1) * 1000
	for _, c := range cs {
		pair, _ := c.ToArray()
		if len(pair) < 1 {
			continue
		}
		name, _ := pair[0].ToString()
		tokText, _, _ := strings.Cut(name, ":")
		t, err := strconv.ParseInt(tokText, 10, 64)
		if err != nil || t < limit {
			return true, next
		}
		if dl := time.UnixMilli(t / 1000); next.IsZero() || dl.Before(next) {
			next = dl
		}
	}
	return false, next
}

// settleCmds are the commands that settle the deliveries of owed leases
// plain commands may settle (see plainSettle): the entries go first, then
// the leases that held them (the group consumers of the lean path's, the
// take function's in L), so that none seems free on the way. settled
// reads their answers, the first len(cmds) of the call's.
func (s *Store) settleCmds(b rueidis.Builder, k leanKeys, owed []store.Lease) rueidis.Commands {
	cmds := make(rueidis.Commands, 0, 8)
	if len(owed) == 0 {
		return cmds
	}
	ids := make([]string, len(owed))
	var inL []string
	for i, o := range owed {
		ids[i] = o.ID.String()
		if !isLeanLease(o.Token) {
			inL = append(inL, lexID(o.ID))
		}
	}
	cmds = append(cmds, b.Xdel().Key(k.s).Id(ids...).Build())
	for _, o := range owed {
		if isLeanLease(o.Token) {
			cmds = append(cmds, b.Arbitrary("XGROUP", "DELCONSUMER").Keys(k.s).Args(leanGroup, s.consumer(strconv.FormatInt(o.Token, 10))).Build())
		}
	}
	if len(inL) > 0 {
		cmds = append(cmds, b.Zrem().Key(k.l).Member(inL...).Build())
	}
	return cmds
}

// lexID is the form of id the functions keep in their sorted sets (lex in
// lua/base.lua): both parts as 16 digits, so that byte order is id order.
func lexID(id store.ID) string {
	var b [33]byte
	pad := func(dst []byte, v uint64) {
		for i := len(dst) - 1; i >= 0; i-- {
			dst[i] = byte('0' + v%10)
			v /= 10
		}
	}
	pad(b[:16], id.MS)
	b[16] = '-'
	pad(b[17:], id.Seq)
	return string(b[:])
}

// settled owes owed again if any of the n commands of settleCmds at the
// start of rs failed, and returns the rest of rs.
func (s *Store) settled(ctx context.Context, key string, owed []store.Lease, n int, rs []rueidis.RedisResult) []rueidis.RedisResult {
	if len(owed) == 0 {
		return rs
	}
	var err error
	for _, r := range rs[:n] {
		// No group: Clear removed it, and the lease with it.
		if e := r.Error(); e != nil && err == nil && !redisErrIs(e, "NOGROUP") {
			err = s.wrap(ctx, e)
		}
	}
	s.giveBack(key, owed, err)
	return rs[n:]
}

// readEntry reads the answer of XREADGROUP COUNT 1 on one stream: the
// entry's id and record, or "" when there is none.
func readEntry(r rueidis.RedisResult) (id, rec string, err error) {
	if err := r.Error(); err != nil {
		if rueidis.IsRedisNil(err) {
			return "", "", nil
		}
		return "", "", err
	}
	// Slices, not AsXRead's map of fields per entry: one allocation
	// fewer per take.
	streams, err := r.AsXReadSlices()
	if err != nil {
		return "", "", errBadReply
	}
	for _, es := range streams {
		if len(es) > 0 {
			for _, fv := range es[0].FieldValues {
				if fv.Field == "r" {
					rec = fv.Value
				}
			}
			return es[0].ID, rec, nil
		}
	}
	return "", "", nil
}

// leanToken is token for a lease of the lean path whose delivery plain
// commands may settle.
func (s *Store) leanToken(d time.Duration) (string, int64, time.Time) {
	dl := s.now().Add(d).UnixMilli()
	t := dl*1000 + leanTokenBase + s.tokens.Add(1)%(1000-leanTokenBase)
	return strconv.FormatInt(t, 10), t, time.UnixMilli(dl)
}

// pelRecheck is how long a take on the lean path may rely on the last
// look at a queue's lean leases (XPENDING) that found none run out: a
// lease of another node's that runs out in between is handed out again
// up to this much later (the function also finds it whenever a take
// finds nothing new). The node's own leases are watched to their
// deadlines, and a look names every lease's deadline, so most takes need
// none: the command was one in twelve of a delivered message's.
//
// Looking at L (ZRANGE) only with XPENDING, not with every take, was
// measured and left: one command fewer per delivered message (10.8 to
// 9.8) moved Redis CPU per delivered message at 2 nodes by a pair median
// of 0.93x (6 A/B pairs of redis/scale, load 4-12, pairs 0.87x-1.46x) and
// node CPU by 1.04x, within the noise, while a lease another node gives
// back, or a message it reads past, would then be handed out after newer
// ones for up to pelRecheck.
const pelRecheck = 100 * time.Millisecond

// pelWatchMax bounds the queues a pelWatch remembers; beyond it, it
// forgets them all, which only makes their next takes look.
const pelWatchMax = 4096

// pelWatch remembers, per queue, until when no lean lease on it can have
// run out, as far as this node knows.
type pelWatch struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func newPelWatch() *pelWatch { return &pelWatch{until: map[string]time.Time{}} }

// due reports whether a take on key at now must look at the leases.
func (w *pelWatch) due(key string, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	u, ok := w.until[key]
	return !ok || !now.Before(u)
}

// checked records a look at key's leases, made at now, that found none
// run out and next the earliest deadline (zero: no lease).
func (w *pelWatch) checked(key string, now, next time.Time) {
	u := now.Add(pelRecheck)
	if !next.IsZero() && next.Before(u) {
		u = next
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if old, ok := w.until[key]; ok && now.Before(old) && old.Before(u) {
		u = old // a lease of this node's taken since the look was sent
	}
	if len(w.until) >= pelWatchMax {
		clear(w.until)
	}
	w.until[key] = u
}

// leased records a lease this node took on key, with its deadline.
func (w *pelWatch) leased(key string, deadline time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if u, ok := w.until[key]; ok && deadline.Before(u) {
		w.until[key] = deadline
	}
}
