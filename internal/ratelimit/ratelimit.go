// Package ratelimit owns postern's request rate limits: a token bucket per
// client address and one per scoped token, kept in bounded memory, that
// answer 429 with Retry-After when a client asks for more than its share.
//
// A request is counted once, when it starts: a long-poll, a stream or a
// websocket is one request however long it lasts. Requests that present a
// known scoped token are limited by the token's bucket only, so that many
// clients behind one address (a NAT, a CI farm) that each hold a token are
// not limited together; all other requests are limited by address.
package ratelimit

import (
	"errors"
	"hash/maphash"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/httpapi"
)

// Defaults.
const (
	// DefaultBurstSeconds sizes a bucket's burst when none is given: this
	// many seconds' worth of the rate.
	DefaultBurstSeconds = 2
	// DefaultMaxClients bounds how many buckets each limiter tracks.
	DefaultMaxClients = 100_000
)

// Options configures a Limiter. A zero rate turns that limit off.
type Options struct {
	// PerAddr is the sustained rate, in requests per second, allowed to one
	// client address (an IPv6 client is counted per /64).
	PerAddr float64
	// PerAddrBurst is how many requests an address may send at once;
	// zero: DefaultBurstSeconds of PerAddr.
	PerAddrBurst int
	// PerToken is the sustained rate allowed to one scoped token.
	PerToken float64
	// PerTokenBurst: as PerAddrBurst, for tokens.
	PerTokenBurst int
	// Exempt paths are never limited (health and metrics endpoints).
	Exempt []string
	// MaxClients bounds the buckets tracked per limit; zero:
	// DefaultMaxClients.
	MaxClients int
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Validate fills the settings left zero with their defaults and reports
// the first one that makes no sense.
func (o *Options) Validate() error {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxClients <= 0 {
		o.MaxClients = DefaultMaxClients
	}
	if o.PerAddr < 0 || o.PerToken < 0 || o.PerAddrBurst < 0 || o.PerTokenBurst < 0 {
		return errors.New("rate limits must not be negative")
	}
	return nil
}

// Limiter enforces Options on requests.
type Limiter struct {
	opts    Options
	policy  *auth.Policy
	trusted []netip.Prefix
	addr    *buckets
	token   *buckets
	refused *prometheus.CounterVec
}

// New returns a limiter: deps.Policy identifies scoped tokens (nil:
// none), X-Forwarded-For is believed from deps.TrustedProxies (the client
// address is the rightmost one not in them), and the refusals are counted
// on deps.Registry.
func New(opts Options, deps capability.Deps) (*Limiter, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	l := &Limiter{opts: opts, policy: deps.Policy, trusted: deps.TrustedProxies}
	l.addr = newBuckets(opts.PerAddr, opts.PerAddrBurst, opts.MaxClients)
	l.token = newBuckets(opts.PerToken, opts.PerTokenBurst, opts.MaxClients)
	l.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postern_ratelimit_refused_total",
		Help: "Requests refused with 429, by what was limited (addr or token).",
	}, []string{"by"})
	deps.Register(l.refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postern_ratelimit_clients",
		Help: "Addresses and tokens with a bucket being tracked.",
	}, func() float64 { return float64(l.Tracked()) }))
	return l, nil
}

// Tracked reports how many buckets the limiter holds.
func (l *Limiter) Tracked() int {
	return l.addr.len() + l.token.len()
}

// Enabled reports whether any limit is on.
func (l *Limiter) Enabled() bool { return l.addr != nil || l.token != nil }

// Wrap limits the requests that reach next.
func (l *Limiter) Wrap(next http.Handler) http.Handler {
	if !l.Enabled() {
		return next
	}
	refuse := func(by string, wait time.Duration) http.Handler {
		secs := int(math.Ceil(wait.Seconds()))
		secs = max(secs, 1)
		return httpapi.Handle(func(w http.ResponseWriter, r *http.Request) error {
			httpapi.SetRoute(w, "ratelimited")
			l.refused.WithLabelValues(by).Inc()
			return httpapi.Errorf(http.StatusTooManyRequests, "rate limit exceeded: retry in %d s", secs).
				WithHeader("Retry-After", strconv.Itoa(secs))
		}, nil)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, p := range l.opts.Exempt {
			if r.URL.Path == p {
				next.ServeHTTP(w, r)
				return
			}
		}
		now := l.opts.Now()
		if tok, ok := l.policy.Identify(r); ok {
			if l.token != nil {
				if ok, wait := l.token.take("t:"+tok.Name, now); !ok {
					refuse("token", wait).ServeHTTP(w, r)
					return
				}
			}
			next.ServeHTTP(w, r)
			return
		}
		if l.addr != nil {
			if ok, wait := l.addr.take(l.clientKey(r), now); !ok {
				refuse("addr", wait).ServeHTTP(w, r)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// clientKey is the address a request is counted under.
func (l *Limiter) clientKey(r *http.Request) string {
	return AddrKey(ClientAddr(r, l.trusted))
}

// AddrKey is what a client address is counted under: an IPv4 address as
// it is, an IPv6 address by its /64 (one subscriber's network), "unknown"
// for an invalid one.
func AddrKey(ip netip.Addr) string {
	if !ip.IsValid() {
		return "unknown"
	}
	if ip.Is6() && !ip.Is4In6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.Unmap().String()
}

// ClientAddr is the client's address: the connection's peer, or, when the
// peer is a trusted proxy, the rightmost X-Forwarded-For entry that is not
// a trusted proxy itself.
func ClientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	ip := peerAddr(r)
	if !ip.IsValid() {
		return ip
	}
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	if !isTrusted(ip) {
		return ip
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return ip // a garbled hop: trust nothing before it
		}
		a = a.Unmap()
		if !isTrusted(a) {
			return a
		}
		ip = a
	}
	return ip
}

// FromThisHost reports whether r's client is on this host: its address
// (the connection's peer, or behind trusted proxies the client
// X-Forwarded-For names) is a loopback address, and no peer other than a
// trusted proxy passed it on. A request from a loopback peer that is not
// a trusted proxy but carries X-Forwarded-For, Forwarded or X-Real-Ip came
// through a proxy on this host that was not declared: its client may be
// anywhere, so it is not local.
func FromThisHost(r *http.Request, trusted []netip.Prefix) bool {
	if !ClientAddr(r, trusted).IsLoopback() {
		return false
	}
	if peer := peerAddr(r); slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(peer) }) {
		return true
	}
	for _, h := range []string{"X-Forwarded-For", "Forwarded", "X-Real-Ip"} {
		if len(r.Header.Values(h)) > 0 {
			return false
		}
	}
	return true
}

func peerAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}

// buckets is a set of token buckets with one rate, sharded by key. Memory is
// bounded: past max buckets, a shard forgets those that have refilled (a
// full bucket is the same as none) and, if that is not enough, the rest.
type buckets struct {
	rate   float64 // tokens per second
	burst  float64
	max    int // per shard
	seed   maphash.Seed
	shards [16]bucketShard
}

type bucketShard struct {
	mu sync.Mutex
	m  map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newBuckets(rate float64, burst, max int) *buckets {
	if rate <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = int(math.Ceil(rate * DefaultBurstSeconds))
	}
	b := &buckets{rate: rate, burst: float64(max1(burst)), max: max1(max / 16), seed: maphash.MakeSeed()}
	for i := range b.shards {
		b.shards[i].m = make(map[string]*bucket)
	}
	return b
}

func max1(n int) int { return max(n, 1) }

func (b *buckets) len() int {
	if b == nil {
		return 0
	}
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// take spends one token of key's bucket. When it is empty it reports how
// long until a token is back.
func (b *buckets) take(key string, now time.Time) (bool, time.Duration) {
	sh := &b.shards[maphash.String(b.seed, key)%uint64(len(b.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	bk := sh.m[key]
	if bk == nil {
		if len(sh.m) >= b.max {
			b.evict(sh, now)
		}
		bk = &bucket{tokens: b.burst, last: now}
		sh.m[key] = bk
	}
	if el := now.Sub(bk.last).Seconds(); el > 0 {
		bk.tokens = math.Min(b.burst, bk.tokens+el*b.rate)
		bk.last = now
	}
	if bk.tokens >= 1 {
		bk.tokens--
		return true, 0
	}
	return false, time.Duration((1 - bk.tokens) / b.rate * float64(time.Second))
}

// evict makes room in sh; sh.mu is held.
func (b *buckets) evict(sh *bucketShard, now time.Time) {
	for k, bk := range sh.m {
		if bk.tokens+now.Sub(bk.last).Seconds()*b.rate >= b.burst {
			delete(sh.m, k)
		}
	}
	if len(sh.m) < b.max {
		return
	}
	// Every tracked client is mid-burst: forget half of them (at least
	// one, to make room). They get a fresh burst, which bounds memory at
	// the cost of a little leniency.
	for k := range sh.m {
		if len(sh.m) < b.max/2+1 {
			break
		}
		delete(sh.m, k)
	}
}
