package redisstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/postern/postern/internal/store"
)

// queueSuffixes name the keys of one queue, in the order the scripts take
// them (see lua/queue.lua).
var queueSuffixes = [...]string{"s", "m", "p", "b", "k", "w", "h", "l"}

// qbase is the common start of every key of queue key, hash tag included.
func (s *Store) qbase(key string) string { return s.prefix + "q{" + tag(key) + "}:" }

// qkeys returns the keys of queue key, with room for extra more. They
// are cut from one string, one allocation instead of one per key.
func (s *Store) qkeys(key string, extra ...string) []string {
	base := s.qbase(key)
	n := len(base) + 1 // every suffix is one byte
	var b strings.Builder
	b.Grow(n * len(queueSuffixes))
	for _, suf := range queueSuffixes {
		b.WriteString(base)
		b.WriteString(suf)
	}
	all := b.String()
	keys := make([]string, 0, len(queueSuffixes)+len(extra))
	for i := range queueSuffixes {
		keys = append(keys, all[i*n:(i+1)*n])
	}
	return append(keys, extra...)
}

func (s *Store) replyKey(key string, id store.ID) string { return s.qbase(key) + "r:" + id.String() }

// expiry is the instant, in ms, that d after now is; at least 1 ms after now
// for a positive d, 0 (never) otherwise.
func expiry(now time.Time, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return max(now.Add(d).UnixMilli(), now.UnixMilli()+1)
}

// encode lays out a record: "<expires>,<dedup until>,<len>:<dedup key><len>:<content type><body>".
// The scripts read only the header up to the dedup key.
func encode(exp, until int64, dedupKey, contentType string, body []byte) string {
	var b strings.Builder
	b.Grow(48 + len(dedupKey) + len(contentType) + len(body))
	var num [20]byte
	b.Write(strconv.AppendInt(num[:0], exp, 10))
	b.WriteByte(',')
	b.Write(strconv.AppendInt(num[:0], until, 10))
	b.WriteByte(',')
	b.Write(strconv.AppendInt(num[:0], int64(len(dedupKey)), 10))
	b.WriteByte(':')
	b.WriteString(dedupKey)
	b.Write(strconv.AppendInt(num[:0], int64(len(contentType)), 10))
	b.WriteByte(':')
	b.WriteString(contentType)
	b.Write(body)
	return b.String()
}

var errBadRecord = errors.New("redis: malformed record")

// decode reads a record stored under id.
func decode(id, rec string) (store.Message, error) {
	var m store.Message
	var err error
	if m.ID, err = store.ParseID(id); err != nil {
		return m, errBadRecord
	}
	field := func(sep byte) (int64, bool) {
		i := strings.IndexByte(rec, sep)
		if i < 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(rec[:i], 10, 64)
		rec = rec[i+1:]
		return n, err == nil
	}
	str := func() (string, bool) {
		n, ok := field(':')
		if !ok || n < 0 || int64(len(rec)) < n {
			return "", false
		}
		v := rec[:n]
		rec = rec[n:]
		return v, true
	}
	exp, ok1 := field(',')
	_, ok2 := field(',')
	dk, ok3 := str()
	ct, ok4 := str()
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return m, errBadRecord
	}
	if exp > 0 {
		m.ExpiresAt = time.UnixMilli(exp)
	}
	m.DedupKey, m.ContentType = dk, ct
	if rec != "" {
		m.Body = []byte(rec)
	}
	return m, nil
}

// Append implements store.Queues.
func (s *Store) Append(ctx context.Context, key string, m store.Message, opts store.AppendOptions) (store.AppendResult, error) {
	if res, done, err := s.leanAppend(ctx, key, m, opts); done {
		return res, err
	}
	now := s.now()
	exp := expiry(now, opts.TTL)
	var until int64
	if opts.DedupKey != "" {
		until = now.Add(max(opts.DedupWindow, 0)).UnixMilli()
	}
	keepFirst := "0"
	if opts.KeepFirst {
		keepFirst = "1"
	}
	res, err := s.qwrite(ctx, scAppend, key, s.qkeys(key), now.UnixMilli(),
		encode(exp, until, opts.DedupKey, m.ContentType, m.Body),
		opts.DedupKey, strconv.FormatInt(exp, 10),
		strconv.Itoa(max(opts.Limit, 0)), strconv.Itoa(max(opts.MaxLen, 0)),
		keepFirst, strconv.Itoa(max(opts.DedupMax, 0)), s.wakeChannel, key)
	if err != nil {
		return store.AppendResult{}, err
	}
	arr, err := res.ToArray()
	if err != nil || len(arr) != 4 {
		return store.AppendResult{}, errBadReply
	}
	kind, _ := arr[0].AsInt64()
	idText, _ := arr[1].ToString()
	n, _ := arr[2].AsInt64()
	trimmed, _ := arr[3].AsInt64()
	var out store.AppendResult
	out.Len, out.Trimmed = int(n), int(trimmed)
	if idText != "" {
		if out.ID, err = store.ParseID(idText); err != nil {
			return store.AppendResult{}, errBadReply
		}
	}
	switch kind {
	case 1:
		out.Duplicate = true
	case 2:
		return store.AppendResult{}, &store.FullError{Len: int(n)}
	}
	return out, nil
}

var errBadReply = errors.New("redis: unexpected script reply")

func modeArg(mode store.TakeMode) string {
	if mode == store.TakePending {
		return "p"
	}
	return "d"
}

// token returns a new lease token for a lease of d from now, and the
// lease's deadline: the deadline in ms times 1000 plus a number of the
// node's, so that two leases taken in one millisecond differ. Scripts
// read the deadline back from it (lua/queue.lua).
func (s *Store) token(d time.Duration) (string, int64, time.Time) {
	dl := s.now().Add(d).UnixMilli()
	t := dl*1000 + s.tokens.Add(1)%funcPlainTokenBase
	return strconv.FormatInt(t, 10), t, time.UnixMilli(dl)
}

// funcPlainToken is the token the take function uses in place of t, a
// token of token's, for a lease whose delivery plain commands may settle
// (see plainSettle).
func funcPlainToken(t int64) (string, int64) {
	pt := t + funcPlainTokenBase
	return strconv.FormatInt(pt, 10), pt
}

// Take implements store.Queues: one script takes the message and its
// lease.
func (s *Store) Take(ctx context.Context, key string, mode store.TakeMode, d time.Duration) (store.Lease, bool, error) {
	return s.TakeOrPark(ctx, key, mode, d, 0)
}

// parkSlack is added to a park, for the clocks of nodes that differ: a
// park that outlives its waiter costs one needless wake-up at most.
const parkSlack = time.Second

// TakeOrPark implements store.Parker: the take script, when it finds
// nothing, records the park in the queue's meta hash, where appends and
// leases given back look before they publish.
func (s *Store) TakeOrPark(ctx context.Context, key string, mode store.TakeMode, d, park time.Duration) (store.Lease, bool, error) {
	var fb fallback
	if mode == store.TakeDelete {
		l, ok, done, f, err := s.leanTake(ctx, key, d)
		if done {
			return l, ok, err
		}
		fb = f
	}
	group := "0"
	if fb.group {
		group = "1"
	}
	keys := s.qkeys(key)
	budget := strconv.Itoa(expiredBudget)
	for {
		tok, t, deadline := s.token(d)
		ptok, pt := "", int64(0)
		if mode == store.TakeDelete && !s.functionsOnly {
			ptok, pt = funcPlainToken(t)
		}
		now := s.now()
		til := "0"
		if park > 0 {
			til = strconv.FormatInt(now.Add(park+parkSlack).UnixMilli(), 10)
		}
		res, err := s.qexec(ctx, scTake, key, keys, now.UnixMilli(), modeArg(mode), budget, tok, til, fb.readPast, group, fb.consumer, ptok)
		if err != nil {
			return store.Lease{}, false, err
		}
		arr, err := res.ToArray()
		if err != nil {
			return store.Lease{}, false, errBadReply
		}
		switch len(arr) {
		case 0:
			return store.Lease{}, false, nil
		case 1: // more expired messages to remove: go on
			continue
		}
		id, _ := arr[0].ToString()
		rec, _ := arr[1].ToString()
		got, _ := arr[2].ToString()
		m, err := decode(id, rec)
		if err != nil {
			return store.Lease{}, false, err
		}
		l := store.Lease{Message: m, Mode: mode}
		switch {
		case got == "0":
		case ptok != "" && got == ptok:
			l.Token, l.Deadline = pt, deadline
		default:
			l.Token, l.Deadline = t, deadline
		}
		return l, true, nil
	}
}

// TakeAll implements store.Queues.
func (s *Store) TakeAll(ctx context.Context, key string, limit int, d time.Duration) ([]store.Lease, error) {
	tok, t, deadline := s.token(d)
	res, err := s.qexec(ctx, scTakeAll, key, s.qkeys(key), s.nowMS(), strconv.Itoa(max(limit, 0)), tok)
	if err != nil {
		return nil, err
	}
	arr, err := res.ToArray()
	if err != nil || len(arr)%2 != 0 {
		return nil, errBadReply
	}
	var out []store.Lease
	for i := 0; i+1 < len(arr); i += 2 {
		id, _ := arr[i].ToString()
		rec, _ := arr[i+1].ToString()
		m, err := decode(id, rec)
		if err != nil {
			// The leases taken run out by themselves.
			return nil, err
		}
		out = append(out, store.Lease{Message: m, Mode: store.TakeDelete, Token: t, Deadline: deadline})
	}
	return out, nil
}

// Ack implements store.Queues.
func (s *Store) Ack(ctx context.Context, key string, id store.ID) (bool, error) {
	return s.execBool(ctx, scAck, key, id.String())
}

// execBool runs a write script that answers 0 or 1.
func (s *Store) execBool(ctx context.Context, sc *luaFunc, key string, args ...string) (bool, error) {
	res, err := s.qexecWrite(ctx, sc, key, s.qkeys(key), s.nowMS(), args...)
	if err != nil {
		return false, err
	}
	n, err := res.AsInt64()
	if err != nil {
		return false, errBadReply
	}
	return n == 1, nil
}

// Status implements store.Queues.
func (s *Store) Status(ctx context.Context, key string, id store.ID) (store.State, error) {
	n, err := s.execInt(ctx, scStatus, key, id.String())
	switch {
	case err != nil:
		return store.StateNone, err
	case n == 1:
		return store.StateQueued, nil
	case n == 2:
		return store.StatePending, nil
	}
	return store.StateNone, nil
}

func (s *Store) execInt(ctx context.Context, sc *luaFunc, key string, args ...string) (int64, error) {
	res, err := s.qexec(ctx, sc, key, s.qkeys(key), s.nowMS(), args...)
	if err != nil {
		return 0, err
	}
	n, err := res.AsInt64()
	if err != nil {
		return 0, errBadReply
	}
	return n, nil
}

// Len implements store.Queues.
func (s *Store) Len(ctx context.Context, key string) (int, error) {
	n, err := s.execInt(ctx, scLen, key)
	return int(n), err
}

// Clear implements store.Queues.
func (s *Store) Clear(ctx context.Context, key string) (int, error) {
	res, err := s.qexecWrite(ctx, scClear, key, s.qkeys(key), s.nowMS())
	if err != nil {
		return 0, err
	}
	n, err := res.AsInt64()
	if err != nil {
		return 0, errBadReply
	}
	return int(n), nil
}

// Reply implements store.Queues.
func (s *Store) Reply(ctx context.Context, key string, id store.ID, r store.Message, ttl time.Duration) (bool, error) {
	now := s.now()
	exp := expiry(now, ttl)
	var ttlMS int64
	if exp > 0 {
		ttlMS = exp - now.UnixMilli()
	}
	res, err := s.qwrite(ctx, scReply, key, s.qkeys(key, s.replyKey(key, id)), now.UnixMilli(),
		id.String(), encode(exp, 0, "", r.ContentType, r.Body), strconv.FormatInt(ttlMS, 10))
	if err != nil {
		return false, err
	}
	n, err := res.AsInt64()
	if err != nil {
		return false, errBadReply
	}
	return n == 1, nil
}

// TakeReply implements store.Queues.
func (s *Store) TakeReply(ctx context.Context, key string, id store.ID) (store.Message, bool, error) {
	if s.closed.Load() {
		return store.Message{}, false, store.ErrClosed
	}
	rec, err := s.c.Do(ctx, s.c.B().Getdel().Key(s.replyKey(key, id)).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return store.Message{}, false, nil
	}
	if err != nil {
		return store.Message{}, false, s.wrap(ctx, err)
	}
	m, err := decode(id.String(), rec)
	if err != nil {
		return store.Message{}, false, err
	}
	if !m.ExpiresAt.IsZero() && !s.now().Before(m.ExpiresAt) {
		return store.Message{}, false, nil
	}
	return m, true, nil
}
