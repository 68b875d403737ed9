package redisstore

import (
	"context"
	"errors"
	"fmt"
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

// qkeys returns the keys of queue key, with room for extra more.
func (s *Store) qkeys(key string, extra ...string) []string {
	base := s.qbase(key)
	keys := make([]string, 0, len(queueSuffixes)+len(extra))
	for _, suf := range queueSuffixes {
		keys = append(keys, base+suf)
	}
	return append(keys, extra...)
}

func (s *Store) replyKey(key string, id store.ID) string { return s.qbase(key) + "r:" + id.String() }

// execWrite is exec for a script that changes what a client may retry:
// when its command may have reached Redis and no answer came, the error
// is store.ErrOutcomeUnknown.
func (s *Store) execWrite(ctx context.Context, sc *rueidis.Lua, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	res, err := s.exec(ctx, sc, keys, now, args...)
	if err != nil && errors.Is(err, store.ErrUnavailable) && !unsent(res.Error()) {
		err = fmt.Errorf("%w: redis %s", store.ErrOutcomeUnknown, reason(res.Error()))
	}
	return res, err
}

// exec runs sc with the clock and the margin in front of args.
func (s *Store) exec(ctx context.Context, sc *rueidis.Lua, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	if s.closed.Load() {
		return rueidis.RedisResult{}, store.ErrClosed
	}
	argv := make([]string, 0, 2+len(args))
	argv = append(argv, strconv.FormatInt(now, 10), s.margin)
	argv = append(argv, args...)
	res := sc.Exec(ctx, s.c, keys, argv)
	if err := res.Error(); err != nil {
		return res, s.wrap(ctx, err)
	}
	return res, nil
}

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
	res, err := s.execWrite(ctx, scAppend, s.qkeys(key), now.UnixMilli(),
		encode(exp, until, opts.DedupKey, m.ContentType, m.Body),
		opts.DedupKey, strconv.FormatInt(exp, 10),
		strconv.Itoa(max(opts.Limit, 0)), strconv.Itoa(max(opts.MaxLen, 0)),
		keepFirst, strconv.Itoa(max(opts.DedupMax, 0)))
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
	t := dl*1000 + int64(s.tokens.Add(1)%1000)
	return strconv.FormatInt(t, 10), t, time.UnixMilli(dl)
}

// Take implements store.Queues: one script takes the message and its
// lease.
func (s *Store) Take(ctx context.Context, key string, mode store.TakeMode, d time.Duration) (store.Lease, bool, error) {
	keys := s.qkeys(key)
	budget := strconv.Itoa(expiredBudget)
	for {
		tok, t, deadline := s.token(d)
		res, err := s.exec(ctx, scTake, keys, s.nowMS(), modeArg(mode), budget, tok)
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
		if got != "0" {
			l.Token, l.Deadline = t, deadline
		}
		return l, true, nil
	}
}

// TakeAll implements store.Queues.
func (s *Store) TakeAll(ctx context.Context, key string, limit int, d time.Duration) ([]store.Lease, error) {
	tok, t, deadline := s.token(d)
	res, err := s.exec(ctx, scTakeAll, s.qkeys(key), s.nowMS(), strconv.Itoa(max(limit, 0)), tok)
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

// Settle implements store.Queues: one script for all of ls.
func (s *Store) Settle(ctx context.Context, key string, ls []store.Lease, delivered bool) error {
	args := make([]string, 1, 1+3*len(ls))
	args[0] = "0"
	if delivered {
		args[0] = "1"
	}
	for _, l := range ls {
		if l.Token != 0 {
			args = append(args, l.ID.String(), strconv.FormatInt(l.Token, 10), modeArg(l.Mode))
		}
	}
	if len(args) == 1 {
		return nil
	}
	_, err := s.exec(ctx, scSettle, s.qkeys(key), s.nowMS(), args...)
	return err
}

// Ack implements store.Queues.
func (s *Store) Ack(ctx context.Context, key string, id store.ID) (bool, error) {
	return s.execBool(ctx, scAck, s.qkeys(key), id.String())
}

// execBool runs a write script that answers 0 or 1.
func (s *Store) execBool(ctx context.Context, sc *rueidis.Lua, keys []string, args ...string) (bool, error) {
	res, err := s.execWrite(ctx, sc, keys, s.nowMS(), args...)
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
	n, err := s.execInt(ctx, scStatus, s.qkeys(key), id.String())
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

func (s *Store) execInt(ctx context.Context, sc *rueidis.Lua, keys []string, args ...string) (int64, error) {
	res, err := s.exec(ctx, sc, keys, s.nowMS(), args...)
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
	n, err := s.execInt(ctx, scLen, s.qkeys(key))
	return int(n), err
}

// Clear implements store.Queues.
func (s *Store) Clear(ctx context.Context, key string) (int, error) {
	res, err := s.execWrite(ctx, scClear, s.qkeys(key), s.nowMS())
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
	return s.execBool(ctx, scReply, s.qkeys(key, s.replyKey(key, id)),
		id.String(), encode(exp, 0, "", r.ContentType, r.Body), strconv.FormatInt(ttlMS, 10))
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
