package brickchain

import (
	"sync"
	"time"
)

// maxLimited bounds the client ids the per-client limiter tracks.
const maxLimited = 100_000

// clientLimiter is a token bucket per client id: rate requests per period,
// as many at once. It keeps at most maxLimited buckets; when full, buckets
// that have refilled (whose clients are idle) are dropped first, and if
// none has, the id is served unlimited rather than growing memory.
type clientLimiter struct {
	rate   float64 // tokens per second
	burst  float64
	now    func() time.Time
	mu     sync.Mutex
	bucket map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newClientLimiter(n int, period time.Duration, now func() time.Time) *clientLimiter {
	if n <= 0 {
		return nil
	}
	return &clientLimiter{rate: float64(n) / period.Seconds(), burst: float64(n), now: now, bucket: make(map[string]*bucket)}
}

// allow takes one token of id's bucket.
func (l *clientLimiter) allow(id string) bool {
	if l == nil {
		return true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket[id]
	if b == nil {
		if len(l.bucket) >= maxLimited && !l.sweepLocked(now) {
			return true
		}
		b = &bucket{tokens: l.burst, at: now}
		l.bucket[id] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweepLocked drops the buckets that are full again; it reports whether
// any was dropped.
func (l *clientLimiter) sweepLocked(now time.Time) bool {
	n := len(l.bucket)
	for id, b := range l.bucket {
		if b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.bucket, id)
		}
	}
	return len(l.bucket) < n
}
