package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// RetryPolicy is how the client retries the calls that are safe to repeat:
// produce (Tunnel.Send, with its idempotency key), consume (Tunnel.Receive:
// a message whose answer was lost is handed out again, never lost),
// acknowledgements, status and length, and inbox sends and receives. A
// call is retried when the server answers 503 (unavailable, or the outcome
// of a write unknown) or 429 (Retry-After is honoured), and when the
// connection fails; never when its context ends.
type RetryPolicy struct {
	// Attempts is the most tries of one call, the first included; 1 turns
	// retrying off.
	Attempts int
	// MinBackoff is the pause before the first retry; each next one
	// doubles, up to MaxBackoff. Each pause is drawn at random from its
	// upper half, so that clients that failed together do not retry
	// together.
	MinBackoff time.Duration
	MaxBackoff time.Duration
}

// Defaults of the retry policy: six tries over about ten seconds.
const (
	DefaultRetryAttempts = 6
	DefaultMinBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff    = 5 * time.Second
	// MaxRetryAfter is the longest Retry-After the client waits for; a
	// server asking for more gets its answer returned instead.
	MaxRetryAfter = time.Minute
)

// DefaultRetry is the policy a Client starts with.
var DefaultRetry = RetryPolicy{Attempts: DefaultRetryAttempts, MinBackoff: DefaultMinBackoff, MaxBackoff: DefaultMaxBackoff}

// WithRetry sets how the client retries (see RetryPolicy).
func WithRetry(p RetryPolicy) Option {
	return func(c *Client) {
		p.Attempts = max(p.Attempts, 1)
		if p.MinBackoff <= 0 {
			p.MinBackoff = DefaultMinBackoff
		}
		p.MaxBackoff = max(p.MaxBackoff, p.MinBackoff)
		c.retry = p
	}
}

// WithoutRetry makes every call a single try.
func WithoutRetry() Option { return WithRetry(RetryPolicy{Attempts: 1}) }

// WithoutIdempotencyKeys stops Tunnel.Send from sending an Idempotency-Key
// of its own (SendOptions.IdempotencyKey still sends one): a produce
// retried after an answer that was lost may then be stored twice.
func WithoutIdempotencyKeys() Option { return func(c *Client) { c.noKeys = true } }

// doRetry is do for a call that is safe to repeat, under the client's
// retry policy.
func (c *Client) doRetry(ctx context.Context, rq request) (*http.Response, []byte, error) {
	for attempt := 1; ; attempt++ {
		resp, data, err := c.do(ctx, rq)
		again, wait := c.shouldRetry(ctx, resp, err, attempt)
		if !again {
			return resp, data, err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			if err == nil {
				return resp, data, nil // the last answer stands
			}
			return nil, nil, err
		}
	}
}

// shouldRetry reports whether try number attempt, which got resp or err,
// is to be repeated, and after how long.
func (c *Client) shouldRetry(ctx context.Context, resp *http.Response, err error, attempt int) (bool, time.Duration) {
	if attempt >= c.retry.Attempts || ctx.Err() != nil {
		return false, 0
	}
	backoff := c.backoff(attempt)
	switch {
	case err != nil:
		return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded), backoff
	case resp.StatusCode == http.StatusServiceUnavailable, resp.StatusCode == http.StatusTooManyRequests:
		if ra, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			return ra <= MaxRetryAfter, ra
		}
		return true, backoff
	}
	return false, 0
}

// backoff is the pause after try number attempt: capped exponential, with
// jitter over its upper half.
func (c *Client) backoff(attempt int) time.Duration {
	d := c.retry.MaxBackoff
	if shift := attempt - 1; shift < 30 {
		d = min(c.retry.MinBackoff<<shift, c.retry.MaxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}

// retryAfter reads a Retry-After value: seconds, or an HTTP date.
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0), true
	}
	return 0, false
}
