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

// The scripts are one Redis function library, loaded once per Redis
// (FUNCTION LOAD, on every master of a Cluster; replicas receive it by
// replication and keep it through a failover). A call (FCALL) then runs
// only its operation's body, not the helpers' definitions too, as EVALSHA
// of a script holding them would. The library's and its functions' names
// carry a hash of its text, so nodes of two versions of postern on one
// Redis each run their own. A Redis that lost the library (a restart
// without persistence, FUNCTION FLUSH, a new Cluster node) is given it
// again by the first call that misses it (see run).
//
// The library is base.lua, queue.lua and history.lua, which define the
// helpers, then each operation's file as the body of a function,
// registered as <library>_<operation>.
type luaFunc struct {
	name  string
	begin string // the Lua call that starts it: base, then its part's own
	body  string // the file of its body
	// stores marks an operation that stores something: Redis refuses it
	// while out of memory. The others (takes, settlings, reads) may run
	// then, so that consumers can still empty a full Redis.
	stores bool
}

const (
	beginQueue   = "begin(keys, args); qbegin()"
	beginHistory = "begin(keys, args); hbegin()"
	beginPlain   = "begin(keys, args)"
)

var (
	scAppend  = &luaFunc{begin: beginQueue, body: "append", stores: true}
	scTake    = &luaFunc{begin: beginQueue, body: "take"}
	scTakeAll = &luaFunc{begin: beginQueue, body: "takeall"}
	scSettle  = &luaFunc{begin: beginQueue, body: "settle"}
	scAck     = &luaFunc{begin: beginQueue, body: "ack"}
	scStatus  = &luaFunc{begin: beginQueue, body: "status"}
	scLen     = &luaFunc{begin: beginQueue, body: "len"}
	scClear   = &luaFunc{begin: beginQueue, body: "clear"}
	scReply   = &luaFunc{begin: beginQueue, body: "reply", stores: true}
	scLeanFix = &luaFunc{begin: beginQueue, body: "leanfix"}

	scRecord = &luaFunc{begin: beginHistory, body: "record", stores: true}
	scSince  = &luaFunc{begin: beginHistory, body: "since"}

	scRegister  = &luaFunc{begin: beginPlain, body: "register", stores: true}
	scLookup    = &luaFunc{begin: beginPlain, body: "lookup"}
	scHeartbeat = &luaFunc{begin: beginPlain, body: "heartbeat", stores: true}
	scNodes     = &luaFunc{begin: beginPlain, body: "nodes"}

	// library is the source FUNCTION LOAD takes; every luaFunc's name is
	// set from it.
	library = buildLibrary(scAppend, scTake, scTakeAll, scSettle, scAck, scStatus, scLen, scClear, scReply, scLeanFix,
		scRecord, scSince, scRegister, scLookup, scHeartbeat, scNodes)
)

func luaFile(name string) string {
	src, err := luaFS.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic("redisstore: missing script " + name)
	}
	return string(src)
}

// buildLibrary lays out the library, names it after a hash of its text
// and names fns.
func buildLibrary(fns ...*luaFunc) string {
	var code strings.Builder
	for _, f := range []string{"base", "queue", "history"} {
		code.WriteString(luaFile(f))
		code.WriteByte('\n')
	}
	for _, fn := range fns {
		fmt.Fprintf(&code, "local function op_%s()\n%s\nend\n", fn.body, luaFile(fn.body))
	}
	sum := sha1.Sum([]byte(code.String()))
	lib := "postern_" + hex.EncodeToString(sum[:6])
	var b strings.Builder
	fmt.Fprintf(&b, "#!lua name=%s\n", lib)
	b.WriteString(code.String())
	for _, fn := range fns {
		fn.name = lib + "_" + fn.body
		flags := "{}"
		if !fn.stores {
			flags = "{'allow-oom'}"
		}
		call := "op_" + fn.body + "()"
		if fn.begin == beginQueue {
			call = "qend(" + call + ")"
		}
		fmt.Fprintf(&b, "redis.register_function{function_name = '%s', flags = %s,\n  callback = function(keys, args) %s; return %s end}\n",
			fn.name, flags, fn.begin, call)
	}
	return b.String()
}

func (fn *luaFunc) fcall(b rueidis.Builder, keys, args []string) rueidis.Completed {
	return b.Fcall().Function(fn.name).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
}

// movedRetries bounds how often write sends a call MOVED away.
const movedRetries = 3

func isMoved(err error) bool {
	rerr, ok := rueidis.IsRedisErr(err)
	if !ok {
		return false
	}
	_, moved := rerr.IsMoved()
	return moved
}

// isNoFunction reports whether err says Redis does not have the function
// called: it lost the library, or never had it.
func isNoFunction(err error) bool {
	return redisErrIs(err, "Function not found")
}

// redisErrIs reports whether err is an error reply starting with msg
// (after Redis' generic "ERR ").
func redisErrIs(err error, msg string) bool {
	rerr, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(strings.TrimPrefix(rerr.Error(), "ERR "), msg)
}

// loadLibrary loads the library on every Redis the client knows (every
// master of a Cluster; replicas receive it from their masters, and refuse
// it if asked). A master that cannot be reached now is given it by the
// first call that finds it missing; a Redis that refuses it (a user not
// allowed FUNCTION LOAD, a Redis older than 7.0) fails the load.
func (s *Store) loadLibrary(ctx context.Context) error {
	var refused, unreached error
	loaded := 0
	for _, c := range s.c.Nodes() {
		err := c.Do(ctx, c.B().FunctionLoad().Replace().FunctionCode(library).Build()).Error()
		switch {
		case err == nil:
			loaded++
		case redisErrIs(err, "READONLY"): // a replica
		case !errors.Is(s.wrap(ctx, err), store.ErrUnavailable) && !errors.Is(s.wrap(ctx, err), store.ErrNoSpace):
			refused = err
		default:
			// Unreachable, loading, out of memory (a Redis that holds
			// the library from before goes on serving): a call that
			// misses the library loads it again.
			unreached = err
		}
	}
	switch {
	case refused != nil:
		return fmt.Errorf("%w: loading postern's function library (it needs Redis 7.0 or later, and a user allowed FUNCTION LOAD)", s.wrap(ctx, refused))
	case loaded == 0 && unreached != nil:
		return s.wrap(ctx, unreached)
	}
	return nil
}

// reload loads the library again after a call found it missing, unless
// another call did so since loaded, the count of loads that call saw.
func (s *Store) reload(ctx context.Context, loaded int64) error {
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if s.loads.Load() != loaded {
		return nil
	}
	err := s.loadLibrary(ctx)
	if err == nil {
		s.loads.Add(1)
	}
	return err
}

// run runs sc once, with the clock and the margin in front of args. When
// Redis lacks the library, run loads it and calls again; err is the
// load's error if that fails.
func (s *Store) run(ctx context.Context, sc *luaFunc, keys []string, now int64, args []string) (res rueidis.RedisResult, err error) {
	argv := make([]string, 0, 2+len(args))
	argv = append(argv, strconv.FormatInt(now, 10), s.margin)
	argv = append(argv, args...)
	loaded := s.loads.Load()
	res = s.c.Do(ctx, sc.fcall(s.c.B(), keys, argv))
	if isNoFunction(res.Error()) {
		if err := s.reload(ctx, loaded); err != nil {
			return res, err
		}
		res = s.c.Do(ctx, sc.fcall(s.c.B(), keys, argv))
	}
	return res, res.Error()
}

// exec runs sc and maps its error to the store's.
func (s *Store) exec(ctx context.Context, sc *luaFunc, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
	if s.closed.Load() {
		return rueidis.RedisResult{}, store.ErrClosed
	}
	res, err := s.run(ctx, sc, keys, now, args)
	if err != nil {
		return res, s.wrap(ctx, err)
	}
	return res, nil
}

// execWrite is exec for a script that changes what a client may retry:
// when its command may have reached Redis and no answer came, the error
// is store.ErrOutcomeUnknown.
func (s *Store) execWrite(ctx context.Context, sc *luaFunc, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
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
func (s *Store) write(ctx context.Context, sc *luaFunc, keys []string, now int64, args ...string) (rueidis.RedisResult, error) {
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
			loaded := s.loads.Load()
			rs := dc.DoMulti(ctx, sc.fcall(dc.B(), keys, argv), wait())
			if isNoFunction(rs[0].Error()) && s.reload(ctx, loaded) == nil {
				rs = dc.DoMulti(ctx, sc.fcall(dc.B(), keys, argv), wait())
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
