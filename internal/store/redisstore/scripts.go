package redisstore

import (
	"context"
	"crypto/sha1"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/postern/postern/internal/store"
)

//go:embed lua/*.lua
var luaFS embed.FS

// luaScript is one script, run by EVALSHA and, when Redis does not have it
// cached (a restarted Redis, a new Cluster node), by EVAL, which caches it.
type luaScript struct {
	src, sha string
}

// script concatenates Lua files into one script: base.lua, then the files
// given (a prelude and an operation's body).
func script(files ...string) *luaScript {
	var b strings.Builder
	for _, f := range append([]string{"base.lua"}, files...) {
		src, err := luaFS.ReadFile("lua/" + f)
		if err != nil {
			panic("redisstore: missing script " + f)
		}
		b.Write(src)
		b.WriteByte('\n')
	}
	sum := sha1.Sum([]byte(b.String()))
	return &luaScript{src: b.String(), sha: hex.EncodeToString(sum[:])}
}

func (sc *luaScript) evalsha(b rueidis.Builder, keys, args []string) rueidis.Completed {
	return b.Evalsha().Sha1(sc.sha).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
}

func (sc *luaScript) eval(b rueidis.Builder, keys, args []string) rueidis.Completed {
	return b.Eval().Script(sc.src).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
}

// movedRetries bounds how often write sends a script MOVED away.
const movedRetries = 3

func isMoved(err error) bool {
	rerr, ok := rueidis.IsRedisErr(err)
	if !ok {
		return false
	}
	_, moved := rerr.IsMoved()
	return moved
}

func isNoScript(err error) bool {
	rerr, ok := rueidis.IsRedisErr(err)
	return ok && rerr.IsNoScript()
}

var (
	scAppend  = script("queue.lua", "append.lua")
	scTake    = script("queue.lua", "take.lua")
	scTakeAll = script("queue.lua", "takeall.lua")
	scSettle  = script("queue.lua", "settle.lua")
	scAck     = script("queue.lua", "ack.lua")
	scStatus  = script("queue.lua", "status.lua")
	scLen     = script("queue.lua", "len.lua")
	scClear   = script("queue.lua", "clear.lua")
	scReply   = script("queue.lua", "reply.lua")

	scRecord = script("history.lua", "record.lua")
	scSince  = script("history.lua", "since.lua")

	scRegister  = script("register.lua")
	scLookup    = script("lookup.lua")
	scHeartbeat = script("heartbeat.lua")
	scNodes     = script("nodes.lua")
)

// run runs sc once, with the clock and the margin in front of args.
func (s *Store) run(ctx context.Context, sc *luaScript, keys []string, now int64, args []string) rueidis.RedisResult {
	argv := make([]string, 0, 2+len(args))
	argv = append(argv, strconv.FormatInt(now, 10), s.margin)
	argv = append(argv, args...)
	res := s.c.Do(ctx, sc.evalsha(s.c.B(), keys, argv))
	if isNoScript(res.Error()) {
		res = s.c.Do(ctx, sc.eval(s.c.B(), keys, argv))
	}
	return res
}

// exec runs sc and maps its error to the store's.
func (s *Store) exec(ctx context.Context, sc *luaScript, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	if s.closed.Load() {
		return rueidis.RedisResult{}, store.ErrClosed
	}
	res := s.run(ctx, sc, keys, now, args)
	if err := res.Error(); err != nil {
		return res, s.wrap(ctx, err)
	}
	return res, nil
}

// execWrite is exec for a script that changes what a client may retry:
// when its command may have reached Redis and no answer came, the error
// is store.ErrOutcomeUnknown.
func (s *Store) execWrite(ctx context.Context, sc *luaScript, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	res, err := s.exec(ctx, sc, keys, now, args...)
	return res, s.outcome(res, err)
}

// outcome turns err, the error of a write whose result is res, into
// store.ErrOutcomeUnknown when the write may have happened.
func (s *Store) outcome(res rueidis.RedisResult, err error) error {
	if err != nil && errors.Is(err, store.ErrUnavailable) && !unsent(res.Error()) {
		return fmt.Errorf("%w: redis %s", store.ErrOutcomeUnknown, reason(res.Error()))
	}
	return err
}

// write runs sc, a script that stores something a client is told is
// stored, and with Options.WaitReplicas waits until that many replicas
// confirm it (WAIT on the connection that ran it).
func (s *Store) write(ctx context.Context, sc *luaScript, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	if s.waitReplicas <= 0 {
		return s.execWrite(ctx, sc, keys, now, args...)
	}
	if s.closed.Load() {
		return rueidis.RedisResult{}, store.ErrClosed
	}
	argv := make([]string, 0, 2+len(args))
	argv = append(argv, strconv.FormatInt(now, 10), s.margin)
	argv = append(argv, args...)
	var res rueidis.RedisResult
	var acked int64
	var waitErr error
	// WAIT counts what replicas confirmed of the writes of its own
	// connection, so the script and WAIT share a dedicated one (WAIT
	// blocks it, which would hold up every command pipelined behind).
	// A dedicated connection does not follow a Cluster's MOVED: the
	// script did not run, and the client has learnt the new owner of the
	// slot, so it is sent again, a few times at most.
	for range movedRetries {
		s.c.Dedicated(func(dc rueidis.DedicatedClient) error {
			wait := func() rueidis.Completed {
				return dc.B().Wait().Numreplicas(int64(s.waitReplicas)).Timeout(s.waitTimeout.Milliseconds()).Build()
			}
			rs := dc.DoMulti(ctx, sc.evalsha(dc.B(), keys, argv), wait())
			if isNoScript(rs[0].Error()) {
				rs = dc.DoMulti(ctx, sc.eval(dc.B(), keys, argv), wait())
			}
			res = rs[0]
			acked, waitErr = rs[1].AsInt64()
			return nil
		})
		if !isMoved(res.Error()) {
			break
		}
	}
	if err := res.Error(); err != nil {
		return res, s.outcome(res, s.wrap(ctx, err))
	}
	if waitErr != nil {
		return res, fmt.Errorf("%w: redis %s while waiting for replicas (the write may have happened)", store.ErrOutcomeUnknown, reason(waitErr))
	}
	if acked < int64(s.waitReplicas) {
		return res, &NotReplicatedError{Confirmed: int(acked), Want: s.waitReplicas, Within: s.waitTimeout}
	}
	return res, nil
}

// NotReplicatedError is the error of a write that Redis made but fewer
// replicas than Options.WaitReplicas confirmed in time: it may be lost if
// the master fails now, or it may be kept. It is a
// store.ErrOutcomeUnknown, answered 503.
type NotReplicatedError struct {
	Confirmed, Want int
	Within          time.Duration
}

func (e *NotReplicatedError) Error() string {
	return fmt.Sprintf("%v: redis: %d of %d replicas confirmed the write within %v",
		store.ErrOutcomeUnknown, e.Confirmed, e.Want, e.Within)
}

// Unwrap makes the error a store.ErrOutcomeUnknown.
func (e *NotReplicatedError) Unwrap() error { return store.ErrOutcomeUnknown }
