package redisstore_test

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// failoverTimeout bounds how long a test waits for Redis to promote a
// replica and for the store to follow.
const failoverTimeout = 30 * time.Second

// retryUntil calls op until it succeeds, failing t when an error is not a
// store.ErrUnavailable or store.ErrOutcomeUnknown, or when
// failoverTimeout passes. Failures are
// counted. It is how a client rides out a failover.
func retryUntil(t *testing.T, what string, op func() error) (failures int) {
	t.Helper()
	deadline := time.Now().Add(failoverTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := op()
		if err == nil {
			return failures
		}
		if !errors.Is(err, store.ErrUnavailable) && !errors.Is(err, store.ErrOutcomeUnknown) {
			t.Fatalf("%s: %v, want success, ErrUnavailable or ErrOutcomeUnknown", what, err)
		}
		if strings.ContainsAny(err.Error(), "\r\n") {
			t.Fatalf("%s: error of more than one line: %q", what, err)
		}
		failures++
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, failoverTimeout, err)
		}
		<-tick.C
	}
}

func openWith(t *testing.T, url string, opts redisstore.Options) *redisstore.Store {
	t.Helper()
	opts.Logger = slog.New(slog.DiscardHandler)
	s, err := redisstore.Open(url, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSentinelFollowsFailover: on a redis-sentinel:// URL the store talks
// to the master the sentinels name. When that master is killed, the
// sentinels promote a replica and the store follows by itself, without a
// restart; with WaitReplicas every message it acknowledged before is
// still there, in order.
func TestSentinelFollowsFailover(t *testing.T) {
	sen := redistest.StartSentinel(t, redistest.SentinelOptions{Replicas: 2})
	s := openWith(t, sen.URL(), redisstore.Options{WaitReplicas: 1})
	const n = 50
	for i := range n {
		if _, err := s.Append(ctx, "t/failover", store.Message{Body: []byte(fmt.Sprint("m", i))}, store.AppendOptions{}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	old, err := sen.Master()
	if err != nil {
		t.Fatal(err)
	}
	if old != sen.Servers[0] {
		t.Fatalf("sentinels name %s as master before any failover, not %s", old.Addr, sen.Servers[0].Addr)
	}
	old.Kill(t)
	killed := time.Now()
	promoted, err := sen.WaitFailover(old, failoverTimeout)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(killed)
	// Writes fail with ErrUnavailable until the store follows, then work:
	// the other replica follows the new master, so WAIT 1 is met again.
	failures := retryUntil(t, "append after the failover", func() error {
		_, err := s.Append(ctx, "t/failover", store.Message{Body: []byte("after")}, store.AppendOptions{})
		return err
	})
	t.Logf("master %s killed: %s promoted after %v, the store wrote again after %v; %d appends failed meanwhile",
		old.Addr, promoted.Addr, took.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), failures)
	for i := range n {
		l, ok, err := s.Take(ctx, "t/failover", store.TakeDelete, time.Minute)
		if err != nil || !ok || string(l.Body) != fmt.Sprint("m", i) {
			t.Fatalf("message %d after the failover: %q %v %v", i, l.Body, ok, err)
		}
		if err := s.Settle(ctx, "t/failover", []store.Lease{l}, true); err != nil {
			t.Fatal(err)
		}
	}
	if l, ok, err := s.Take(ctx, "t/failover", store.TakeDelete, time.Minute); err != nil || !ok || string(l.Body) != "after" {
		t.Fatalf("the message appended after the failover: %q %v %v", l.Body, ok, err)
	}
}

// TestWaitReplicas: with WaitReplicas a write that stores a message is
// acknowledged once that many replicas confirm it. When they do not in
// time, the write fails with a *NotReplicatedError, a
// store.ErrOutcomeUnknown: the write may have happened (it has, on the
// master).
func TestWaitReplicas(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	replica := redistest.Start(t, redistest.Options{ReplicaOf: master.Addr})
	if err := replica.WaitSynced(failoverTimeout); err != nil {
		t.Fatal(err)
	}
	u := master.URL()
	one := openWith(t, u, redisstore.Options{WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond})
	two := openWith(t, u, redisstore.Options{WaitReplicas: 2, WaitTimeout: 200 * time.Millisecond})

	_, err := one.Append(ctx, "t/w", store.Message{Body: []byte("confirmed")}, store.AppendOptions{})
	if err != nil {
		t.Fatalf("append with its replica confirming: %v", err)
	}
	// The replica has it by the time the append returns.
	_, prefix := raw(t, u)
	if got, err := replica.Do("XLEN", prefix+"q{t/w}:s"); err != nil || got != int64(1) {
		t.Fatalf("stream length on the replica right after the append: %v %v", got, err)
	}
	// Two replicas are asked for, one exists: the append happens on the
	// master but is not acknowledged.
	_, err = two.Append(ctx, "t/w", store.Message{Body: []byte("unconfirmed")}, store.AppendOptions{})
	var nr *redisstore.NotReplicatedError
	if !errors.As(err, &nr) || !errors.Is(err, store.ErrOutcomeUnknown) || nr.Confirmed != 1 || nr.Want != 2 {
		t.Fatalf("append waiting for 2 of 1 replicas: %v, want a NotReplicatedError (1 of 2)", err)
	}
	if !strings.Contains(err.Error(), "1 of 2 replicas confirmed") || strings.ContainsAny(err.Error(), "\r\n") {
		t.Fatalf("error does not say on one line how many replicas confirmed the write: %q", err)
	}
	if n, err := one.Len(ctx, "t/w"); err != nil || n != 2 {
		t.Fatalf("len after the unconfirmed append: %d %v, want 2 (it happened)", n, err)
	}
	// Replies wait too; takes, settles and acks do not.
	l, ok, err := two.Take(ctx, "t/w", store.TakePending, time.Minute)
	if err != nil || !ok {
		t.Fatalf("take does not wait for replicas: %v %v", ok, err)
	}
	if _, err := two.Reply(ctx, "t/w", l.ID, store.Message{Body: []byte("r")}, time.Minute); !errors.As(err, &nr) {
		t.Fatalf("reply waiting for 2 of 1 replicas: %v", err)
	}
	l, ok, err = two.Take(ctx, "t/w", store.TakeDelete, time.Minute)
	if err != nil || !ok {
		t.Fatalf("take: %v %v", ok, err)
	}
	if err := two.Settle(ctx, "t/w", []store.Lease{l}, false); err != nil {
		t.Fatalf("settle does not wait for replicas: %v", err)
	}

	// The replica dies: nothing is confirmed any more.
	replica.Kill(t)
	start := time.Now()
	_, err = one.Append(ctx, "t/w", store.Message{Body: []byte("alone")}, store.AppendOptions{})
	if !errors.As(err, &nr) || nr.Confirmed != 0 {
		t.Fatalf("append with the replica dead: %v, want a NotReplicatedError (0 of 1)", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("gave up after %v, before the wait timeout", d)
	}
}

// TestSentinelURLs: redis-sentinel:// URLs are read as documented, and a
// malformed one is refused with a one-line reason that names the form.
func TestSentinelURLs(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"redis-sentinel://", "no sentinel address"},
		{"redis-sentinel://127.0.0.1:1", "no master name"},
		{"redis-sentinel://127.0.0.1:1/", "no master name"},
		{"redis-sentinel://127.0.0.1:1/m/x", "database \"x\" is not a number"},
		{"redis-sentinel://127.0.0.1:1/m?bogus=1", "unknown parameter \"bogus\""},
		{"redis-sentinel://:1/m", "names no host"},
	} {
		_, err := redisstore.Open(c.url, redisstore.Options{DialTimeout: 100 * time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("%s: %v, want an error saying %q", c.url, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), "redis-sentinel://") && !strings.Contains(c.want, "parameter") {
			t.Errorf("%s: %v does not show the form", c.url, err)
		}
	}
	// Well formed, but nobody listens: unavailable, password not shown.
	_, err := redisstore.Open("redis-sentinel://u:secret@127.0.0.1:1,127.0.0.1:2/m/3?prefix=p:", redisstore.Options{DialTimeout: 100 * time.Millisecond})
	if !errors.Is(err, store.ErrUnavailable) || strings.Contains(err.Error(), "secret") {
		t.Fatalf("sentinels not listening: %v, want ErrUnavailable without the password", err)
	}
}
