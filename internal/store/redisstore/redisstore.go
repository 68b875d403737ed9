// Package redisstore is the Redis storage engine, for many stateless postern
// nodes behind one load balancer sharing one Redis 7.0+ (or Redis Cluster).
// It implements store.Engine, store.Fanout, store.History and
// store.Directory.
//
// # Layout
//
// Every operation of store.Queues is one Lua function (one library of
// them, see scripts.go), so it is atomic across all nodes without locks,
// except the common operations of a tunnel, which run as plain commands
// on the same keys (the lean path, see lean.go): two nodes taking from one
// tunnel at once each get a different message or none, never an error or
// a message twice (the consumer-group race of the original relay cannot
// happen: a function creates the group, atomically). A queue is a
// stream, which orders messages by id, holds their records in its entries
// and keeps its last id so ids keep increasing after the queue empties,
// plus a hash of records replaced in place by a dedup key (and of the
// records older versions kept beside their entries), a sorted set of
// pending ids, a sorted set of leased ids (a message taken stays in the
// stream under a lease, scored by its deadline and the taking node's
// token, until it is settled; a lease that ran out is reclaimed by the
// next take, on any node), a sorted set of restored ids (written by older
// versions, which put messages back at their id position; still read), a
// hash of dedup keys with the ids of their messages and a sorted set of
// dedup windows, plus the stream's consumer group, through which the lean
// path hands out new entries (the group's pending entries are its
// leases). The take and its lease are one call, and so is the settling of
// a batch. Replies live in keys of their own, so Clear leaves
// them. Every key of one queue, history or directory entry carries the
// same hash tag ({...}), so it lives in one Cluster slot and a function
// may touch all of it.
//
// # Time
//
// Every expiry decision is taken from Options.Now, passed to the scripts, so
// expiry is exact and testable with a manual clock, and nodes agree within
// their clock skew. Redis TTLs only collect garbage: a key lives as long as
// the longest-lived data it holds plus Options.GCMargin, and for ever while
// it holds a message without expiry.
//
// # Fan-out
//
// Publish is PUBLISH on the topic's channel. Subscriptions of a Store share
// one dedicated pub/sub connection owned by one goroutine, which subscribes
// and unsubscribes channels as topics come and go, and after a lost
// connection reconnects with backoff and subscribes every topic again.
// Payloads arrive in publish order per publisher; payloads published while a
// node is disconnected are missed (best effort, as store.Fanout says).
//
// # Client
//
// The client is github.com/redis/rueidis: it pipelines concurrent commands
// of many goroutines onto one connection per Redis automatically (many
// HTTP handlers' calls share one write and one read syscall, here and in
// Redis, which matters on small machines), never retries a
// write by itself, speaks to a single Redis and a Cluster through one
// interface, and gives dedicated connections with pub/sub hooks.
package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/rueidis"

	"github.com/postern/postern/internal/store"
)

// Defaults of Options.
const (
	// DefaultPrefix starts every key and channel name.
	DefaultPrefix = "postern:"
	// DefaultGCMargin is added to every Redis TTL: it covers clock skew
	// between nodes and keeps an emptied queue's last id for a while.
	DefaultGCMargin = 10 * time.Minute
	// DefaultTimeout bounds one round trip to Redis; a Redis that does not
	// answer within it counts as unavailable.
	DefaultTimeout = 5 * time.Second
	// DefaultDialTimeout bounds connecting to Redis.
	DefaultDialTimeout = 2 * time.Second
	// DefaultReconnectMax is the longest pause between two attempts to
	// reconnect the pub/sub connection.
	DefaultReconnectMax = time.Second
	// DefaultWaitTimeout is how long a write waits for Options.WaitReplicas
	// replicas to confirm it.
	DefaultWaitTimeout = time.Second
	// DefaultFlushDelay is how long the writer of a connection to Redis,
	// woken by a command after it sent everything queued, waits for the
	// commands of other calls under way before it sends (rueidis'
	// MaxFlushDelay; never for a lone caller): fewer, fuller writes, for
	// fewer system calls here and in Redis. Measured on the produce load
	// of bench/ (32 connections, one node on one Redis, a busy 2-core
	// machine, 12 rounds interleaved with no delay): a median of 6% less
	// CPU per request (client, node and Redis), 5% less Redis CPU per
	// produce, and the same or a higher rate; an append costs the node
	// about a quarter less CPU when 32 goroutines append at once
	// (BenchmarkAppend). With two calls at a time (BenchmarkDeliver) it
	// cost Redis about 10% more CPU per message, Redis idling between
	// the later writes; the scale benchmark's delivery load showed no
	// difference beyond the noise. 100 µs rather than 20 µs, measured
	// with the settling delay of 10 ms (9 pairs of redis/scale and 12 of
	// redis/produce interleaved, load 7-22): Redis read fewer times per
	// delivered message at 1, 2 and 4 nodes, and spent less CPU per
	// delivered message (medians of the pairs' ratios 0.80, 0.89 and
	// 0.86) and per produce (0.89); the CPU per produce request in all
	// (client, node and Redis) stayed the same (0.97, within the noise).
	// 250 µs and 500 µs measured no better than 100 (redis/scale, 12 and 6
	// pairs interleaved, load 6-10): Redis read 13% and 23% less often per
	// delivered message at 2 nodes, but its CPU per delivered message
	// moved within the noise (pair medians 0.93x and 0.92x, pairs from
	// 0.80x to 1.64x) while delivered msg/s fell to 0.87x and 0.80x at 2
	// nodes, 0.90x and 0.63x at 4.
	DefaultFlushDelay = 100 * time.Microsecond
	// DefaultSentinelPort is the port of a sentinel address that names none.
	DefaultSentinelPort = "26379"
	// sentinelRefresh is how often a client on Sentinel asks the sentinels
	// who the master is, in case it missed their announcement.
	sentinelRefresh = 5 * time.Second
)

// expiredBudget is how many expired messages one Take script removes before
// it hands back to Go, so that no script blocks Redis for long.
const expiredBudget = 256

// Options configures a Store.
type Options struct {
	// Now is the clock every expiry decision is taken from; nil means
	// time.Now.
	Now func() time.Time
	// Prefix starts every key and channel name; empty means DefaultPrefix
	// (or the URL's prefix parameter). It must not contain '{' or '}'.
	Prefix string
	// GCMargin is added to Redis TTLs; zero means DefaultGCMargin.
	GCMargin time.Duration
	// Timeout bounds one round trip; zero means DefaultTimeout.
	Timeout time.Duration
	// DialTimeout bounds connecting; zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// ReconnectMax caps the pub/sub reconnect backoff; zero means
	// DefaultReconnectMax.
	ReconnectMax time.Duration
	// TLS, when set, is the TLS configuration of rediss:// connections (for
	// a private CA); nil means the system's roots (SSL_CERT_FILE and
	// SSL_CERT_DIR name others). Its ServerName defaults to the URL's host.
	TLS *tls.Config
	// Logger receives connection events; nil means slog.Default().
	Logger *slog.Logger
	// WaitReplicas > 0 makes every write that stores a message (append,
	// reply, restore) wait until that many replicas confirm it (WAIT); a
	// write they do not confirm within WaitTimeout fails with a
	// *NotReplicatedError, although it may have happened. Writes that
	// remove a message (take, ack, clear) do not wait: one that a failover
	// loses makes a message come back, never go missing.
	WaitReplicas int
	// WaitTimeout bounds the wait for WaitReplicas; zero means
	// DefaultWaitTimeout.
	WaitTimeout time.Duration
	// SettleDelay is how long a delivery settled may wait for the next
	// call on its queue to carry it to Redis (see DefaultSettleDelay, and
	// owed.go); zero means DefaultSettleDelay, negative sends each
	// settling by itself at once.
	SettleDelay time.Duration
	// FlushDelay is how long the connection's writer may wait for more
	// commands before it sends (see DefaultFlushDelay); zero means
	// DefaultFlushDelay, negative sends at once.
	FlushDelay time.Duration
	// FunctionsOnly runs every queue operation as a function, leaving
	// the lean path (lean.go) unused: for tests of the two side by side,
	// and comparisons.
	FunctionsOnly bool
}

// Store is the Redis engine.
type Store struct {
	c       rueidis.Client
	now     func() time.Time
	prefix  string
	margin  string // GC margin in ms, as the scripts take it
	timeout time.Duration
	log     *slog.Logger
	addr    string // host:port of the first address, for messages

	waitReplicas int
	waitTimeout  time.Duration
	wakeChannel  string // the pub/sub channel of store.WakeTopic

	owed *owed // deliveries settled and not yet sent

	pelWatch *pelWatch // when a lean take must look for leases run out

	functionsOnly bool   // see Options.FunctionsOnly
	nodeTag       string // names this store's group consumers (see consumer)

	fan *fanout

	tokens atomic.Int64 // numbers the leases taken in one millisecond

	loadMu sync.Mutex   // one load of the function library at a time
	loads  atomic.Int64 // loads of the library since Open (see reload)

	closed    atomic.Bool
	closeOnce sync.Once
}

var (
	_ store.Engine    = (*Store)(nil)
	_ store.Fanout    = (*Store)(nil)
	_ store.Parker    = (*Store)(nil)
	_ store.History   = (*Store)(nil)
	_ store.Directory = (*Store)(nil)
)

// Open connects to the Redis named by rawURL:
//
//	redis://[user:pass@]host:port/db[?prefix=p&addr=host2:port2]
//	rediss://...   the same over TLS
//	redis-sentinel://[user:pass@]host:port[,host:port...]/master[/db][?prefix=p]
//
// Several addr parameters name more Cluster nodes to start from; a Cluster is
// detected by itself. A redis-sentinel URL names the sentinels (port 26379
// when none is given) and the name they know the master by; the user and
// password are the master's, the parameters sentinel_user and
// sentinel_password the sentinels' own. The same is
// redis://sentinel:port/db?master_set=master&addr=sentinel2:port. The
// prefix parameter sets Options.Prefix when that is empty. Open fails when
// Redis cannot be reached.
func Open(rawURL string, opts Options) (*Store, error) {
	if rest, ok := strings.CutPrefix(rawURL, "redis-sentinel://"); ok {
		copt, prefix, err := parseSentinelURL(rest)
		if err != nil {
			return nil, err
		}
		if opts.Prefix == "" {
			opts.Prefix = prefix
		}
		return New(copt, opts)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid redis URL: %v", redactErr(err))
	}
	if opts.Prefix == "" {
		opts.Prefix = u.Query().Get("prefix")
	}
	copt, err := rueidis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid redis URL %s: %v", u.Redacted(), err)
	}
	return New(copt, opts)
}

// parseSentinelURL reads what follows "redis-sentinel://". Its host part
// holds a list of addresses, which net/url does not take.
func parseSentinelURL(rest string) (rueidis.ClientOption, string, error) {
	var copt rueidis.ClientOption
	const form = "redis-sentinel://[user:pass@]host:port[,host:port...]/master[/db]"
	rest, rawQuery, _ := strings.Cut(rest, "?")
	authority, path, _ := strings.Cut(rest, "/")
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		ui, err := url.Parse("redis://" + authority[:at+1] + "x")
		if err != nil || ui.User == nil {
			return copt, "", fmt.Errorf("invalid redis-sentinel URL: bad user or password (want %s)", form)
		}
		copt.Username = ui.User.Username()
		copt.Password, _ = ui.User.Password()
		authority = authority[at+1:]
	}
	for _, a := range strings.Split(authority, ",") {
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			host, port = a, DefaultSentinelPort
		}
		if host == "" {
			return copt, "", fmt.Errorf("invalid redis-sentinel URL: address %q names no host (want %s)", a, form)
		}
		copt.InitAddress = append(copt.InitAddress, net.JoinHostPort(host, port))
	}
	if len(copt.InitAddress) == 0 {
		return copt, "", fmt.Errorf("invalid redis-sentinel URL: no sentinel address (want %s)", form)
	}
	master, db, _ := strings.Cut(path, "/")
	if master == "" {
		return copt, "", fmt.Errorf("invalid redis-sentinel URL: no master name (want %s)", form)
	}
	if m, err := url.PathUnescape(master); err == nil {
		master = m
	}
	copt.Sentinel.MasterSet = master
	if db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return copt, "", fmt.Errorf("invalid redis-sentinel URL: database %q is not a number (want %s)", db, form)
		}
		copt.SelectDB = n
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return copt, "", fmt.Errorf("invalid redis-sentinel URL: %v", err)
	}
	for k := range q {
		switch k {
		case "prefix", "sentinel_user", "sentinel_password":
		default:
			return copt, "", fmt.Errorf("invalid redis-sentinel URL: unknown parameter %q (want prefix, sentinel_user or sentinel_password)", k)
		}
	}
	copt.Sentinel.Username = q.Get("sentinel_user")
	copt.Sentinel.Password = q.Get("sentinel_password")
	return copt, q.Get("prefix"), nil
}

// New connects with a rueidis client option; Open is the usual way in.
func New(copt rueidis.ClientOption, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("redis key prefix %q must not contain '{' or '}'", opts.Prefix)
	}
	if opts.GCMargin <= 0 {
		opts.GCMargin = DefaultGCMargin
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.ReconnectMax <= 0 {
		opts.ReconnectMax = DefaultReconnectMax
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.WaitReplicas < 0 {
		return nil, fmt.Errorf("redis: replicas to wait for must be 0 or more, not %d", opts.WaitReplicas)
	}
	if opts.WaitTimeout <= 0 {
		opts.WaitTimeout = DefaultWaitTimeout
	}
	if opts.FlushDelay == 0 {
		opts.FlushDelay = DefaultFlushDelay
	}
	copt = clientOption(copt, opts)
	if len(copt.InitAddress) == 0 {
		return nil, errors.New("redis: no address given")
	}
	c, err := rueidis.NewClient(copt)
	if err != nil {
		return nil, fmt.Errorf("redis at %s: %w", copt.InitAddress[0], unavailable(err))
	}
	s := &Store{
		c:       c,
		now:     opts.Now,
		prefix:  opts.Prefix,
		margin:  fmt.Sprint(opts.GCMargin.Milliseconds()),
		timeout: opts.Timeout,
		log:     opts.Logger,
		addr:    copt.InitAddress[0],

		waitReplicas: opts.WaitReplicas,
		waitTimeout:  opts.WaitTimeout,

		functionsOnly: opts.FunctionsOnly,
		nodeTag:       newNodeTag(),
		pelWatch:      newPelWatch(),
	}
	s.wakeChannel = s.channel(store.WakeTopic)
	if opts.SettleDelay == 0 {
		opts.SettleDelay = DefaultSettleDelay
	}
	s.owed = newOwed(max(opts.SettleDelay, 0))
	ctx, cancel := context.WithTimeout(context.Background(), opts.DialTimeout+opts.Timeout)
	defer cancel()
	if err := s.Ping(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("redis at %s: %w", s.addr, err)
	}
	// A Redis out of memory refuses the load; one that holds the library
	// from before serves anyway, and calls load it when it has room.
	if err := s.loadLibrary(ctx); err != nil && !errors.Is(err, store.ErrNoSpace) {
		c.Close()
		return nil, fmt.Errorf("redis at %s: %w", s.addr, err)
	}
	s.fan = newFanout(s, opts.ReconnectMax)
	return s, nil
}

// clientOption completes the rueidis option copt from opts (whose
// defaults are set).
func clientOption(copt rueidis.ClientOption, opts Options) rueidis.ClientOption {
	if opts.TLS != nil && copt.TLSConfig != nil {
		cfg := opts.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = copt.TLSConfig.ServerName
		}
		copt.TLSConfig = cfg
	}
	if copt.Dialer.Timeout == 0 {
		copt.Dialer.Timeout = opts.DialTimeout
	}
	if copt.ConnWriteTimeout == 0 {
		copt.ConnWriteTimeout = opts.Timeout
	}
	if copt.Sentinel.MasterSet != "" {
		if copt.Sentinel.Dialer.Timeout == 0 {
			copt.Sentinel.Dialer.Timeout = opts.DialTimeout
		}
		if copt.Sentinel.TopologyRefreshInterval == 0 {
			copt.Sentinel.TopologyRefreshInterval = sentinelRefresh
		}
	}
	if copt.MaxFlushDelay == 0 {
		copt.MaxFlushDelay = max(opts.FlushDelay, 0)
	}
	copt.DisableCache = true // no client-side caching: nothing is read twice
	copt.DisableRetry = true // a failed call is answered 503, never replayed
	if copt.PipelineMultiplex == 0 {
		// One connection per Redis (per master of a Cluster, as
		// rueidis does there anyway) for the pipelined commands, not
		// rueidis' default of one per core: the commands of concurrent
		// calls then share fewer, fuller writes, and Redis, whose CPU
		// per message is mostly the reads and writes of its event loop,
		// reads many calls' commands at once. Measured on two nodes
		// sharing one Redis, 16 rounds interleaved with the default on
		// a loaded machine: a median of about 20% less Redis CPU per
		// delivered message (the gain shrinks as the load falls).
		copt.PipelineMultiplex = -1
	}
	return copt
}

// newNodeTag is a random tag that tells this store's lean leases from
// other nodes' (see consumer).
func newNodeTag() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Name implements store.Engine.
func (s *Store) Name() string { return "redis" }

// Ping implements store.Engine.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return s.wrap(ctx, s.c.Do(ctx, s.c.B().Ping().Build()).Error())
}

// Close implements store.Engine. It sends the settlings it still owes
// (see owed.go), then ends every subscription.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeOwed()
		s.closed.Store(true)
		if s.fan != nil {
			s.fan.close()
		}
		s.c.Close()
	})
	return nil
}

// now returns the clock in ms, as the scripts take it.
func (s *Store) nowMS() int64 { return s.now().UnixMilli() }

// tag is the hash tag content for k: never empty, never holding a brace,
// so all keys built from one k hash to one Cluster slot.
func tag(k string) string {
	if k == "" {
		return "%"
	}
	if !strings.ContainsAny(k, "%{}") {
		return k
	}
	r := strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")
	return r.Replace(k)
}

// wrap maps a client error to the store's errors, with a one-line reason
// that names no address or secret.
func (s *Store) wrap(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if s.closed.Load() {
		return store.ErrClosed
	}
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return err
	}
	if rerr, ok := rueidis.IsRedisErr(err); ok {
		msg := oneLine(rerr.Error())
		switch code, _, _ := strings.Cut(msg, " "); code {
		case "OOM":
			return fmt.Errorf("%w: redis: %s", store.ErrNoSpace, msg)
		case "LOADING", "BUSY", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS", "MISCONF":
			return fmt.Errorf("%w: redis: %s", store.ErrUnavailable, msg)
		case "MOVED", "ASK":
			// A Cluster's slots moving: the command did not run. The
			// reply names a node's address, which no answer shows.
			return fmt.Errorf("%w: redis cluster slots are moving", store.ErrUnavailable)
		}
		return fmt.Errorf("redis: %s", msg)
	}
	return unavailable(err)
}

// unavailable wraps a transport error in store.ErrUnavailable with a short
// reason.
func unavailable(err error) error {
	return fmt.Errorf("%w: redis %s", store.ErrUnavailable, reason(err))
}

// reason names a transport error in a few words.
func reason(err error) string {
	if err == nil {
		return "no answer"
	}
	var ne net.Error
	var verr *tls.CertificateVerificationError
	var rerr tls.RecordHeaderError
	switch {
	case errors.As(err, &verr):
		return "TLS certificate not trusted"
	case errors.As(err, &rerr), strings.Contains(err.Error(), "tls:"):
		return "TLS handshake failed"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return "connection lost"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "no answer in time"
	case errors.Is(err, rueidis.ErrClosing):
		return "unreachable"
	case strings.Contains(err.Error(), "EOF"):
		return "connection lost"
	}
	return "connection failed"
}

// unsent reports whether an error means the command did not run: Redis
// refused it with an error reply, or the connection could not be made at
// all. Anything else (no answer in time, a connection lost) may have come
// after Redis ran it.
func unsent(err error) bool {
	var oe *net.OpError
	var verr *tls.CertificateVerificationError
	if _, ok := rueidis.IsRedisErr(err); ok {
		return true
	}
	switch {
	case err == nil:
		return false
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, rueidis.ErrClosing), errors.As(err, &verr):
		return true
	case errors.As(err, &oe) && oe.Op == "dial":
		return true
	}
	return false
}

func oneLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// redactErr drops the URL (which may hold a password) from a url.Parse
// error.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
