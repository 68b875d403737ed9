package broker

import (
	"context"
	"sync"

	"github.com/postern/postern/internal/store"
)

// minRing is the first size of a subscriber's queue; it doubles up to the
// queue length as messages pile up and is released when drained, so an
// idle subscriber holds no queue at all.
const minRing = 4

// Subscription is one subscriber of a channel. Its queue is bounded: when
// a message finds it full the subscription ends with ErrSlow. One reader
// at a time may call Next or TryNext.
type Subscription struct {
	b       *Broker
	ch      *channel
	name    string
	max     int
	wake    func()
	idx     int // position in ch.subs; guarded by ch.mu
	closeMu sync.Once

	mu   sync.Mutex
	ring []*Message
	head int
	n    int
	err  error // why it ended; nil while open
	// signal (cap 1: the queue went non-empty) and done (closed when the
	// subscription ends) are made by the first call of Signal and Done:
	// a transport woken through Wake never makes them, and an idle
	// websocket subscriber is two channels smaller.
	signal chan struct{}
	done   chan struct{}

	// Replay state, touched only by the reader.
	replay []*Message
	skip   store.ID // live messages with ids up to skip were replayed
	gap    bool
}

func newSubscription(b *Broker, name string, max int, wake func()) *Subscription {
	return &Subscription{b: b, name: name, max: max, wake: wake, idx: -1}
}

// Channel is the channel's name.
func (s *Subscription) Channel() string { return s.name }

// Gap reports whether the history asked for with SubscribeOptions.Since
// may be missing messages (trimmed or expired): the subscriber should
// assume it missed some.
func (s *Subscription) Gap() bool { return s.gap }

// Done is closed when the subscription ends: Err says why.
func (s *Subscription) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		s.done = make(chan struct{})
		if s.err != nil {
			close(s.done)
		}
	}
	return s.done
}

// Err reports why the subscription ended: ErrSlow, ErrShuttingDown or
// ErrClosed; nil while it is open.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Signal receives a value when the queue goes from empty to non-empty: a
// reader that found nothing waits on it (and on Done) before trying again.
func (s *Subscription) Signal() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.signal == nil {
		s.signal = make(chan struct{}, 1)
		if s.n > 0 || len(s.replay) > 0 {
			// Queued before anyone listened: what a push would have said.
			s.signal <- struct{}{}
		}
	}
	return s.signal
}

// Len reports the number of messages waiting, replay included.
func (s *Subscription) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n + len(s.replay)
}

func (s *Subscription) loadReplay(ctx context.Context, after store.ID) error {
	s.skip = after
	if s.b.hist == nil {
		s.gap = !after.IsZero()
		return nil
	}
	entries, gap, err := s.b.hist.Since(ctx, historyKey(s.name), after, s.b.opts.HistoryLen)
	if err != nil {
		return err
	}
	s.gap = gap
	rp := make([]*Message, len(entries))
	for i, e := range entries {
		rp[i] = &Message{ID: e.ID, Binary: e.ContentType == contentBinary, Body: e.Body}
		s.skip = e.ID
	}
	s.mu.Lock()
	s.replay = rp
	s.mu.Unlock()
	return nil
}

// push queues m and reports whether it was queued. A full queue ends the
// subscription with ErrSlow.
func (s *Subscription) push(m *Message) bool {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return false
	}
	if s.n >= s.max {
		s.endLocked(ErrSlow)
		signal := s.signal
		s.mu.Unlock()
		s.b.m.slow.Inc()
		s.woken(signal)
		return false
	}
	if s.n == len(s.ring) {
		s.grow()
	}
	s.ring[(s.head+s.n)%len(s.ring)] = m
	s.n++
	first := s.n == 1
	signal := s.signal
	s.mu.Unlock()
	if first {
		s.woken(signal)
	}
	return true
}

// Deliver queues m for this subscriber only (for example the empty frame
// that answers a websocket keep-alive). It reports false when the
// subscription has ended, or ends now because its queue is full.
func (s *Subscription) Deliver(m *Message) bool { return s.push(m) }

func (s *Subscription) grow() {
	size := max(minRing, 2*len(s.ring))
	size = min(size, s.max)
	ring := make([]*Message, size)
	for i := 0; i < s.n; i++ {
		ring[i] = s.ring[(s.head+i)%len(s.ring)]
	}
	s.ring, s.head = ring, 0
}

// woken tells the reader that the queue went non-empty or the
// subscription ended: on signal (s.signal as read under s.mu; nil when no
// reader asked for it) and through the Wake hook.
func (s *Subscription) woken(signal chan struct{}) {
	if signal != nil {
		select {
		case signal <- struct{}{}:
		default:
		}
	}
	if s.wake != nil {
		s.wake()
	}
}

// TryNext returns the next message without waiting. ok is false when there
// is none; err is not nil once the subscription ended (queued messages are
// dropped then: an ended subscriber is cut off).
func (s *Subscription) TryNext() (m *Message, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, false, s.err
	}
	if len(s.replay) > 0 {
		m = s.replay[0]
		s.replay[0] = nil
		s.replay = s.replay[1:]
		return m, true, nil
	}
	for s.n > 0 {
		m = s.ring[s.head]
		s.ring[s.head] = nil
		s.head = (s.head + 1) % len(s.ring)
		s.n--
		if s.n == 0 && len(s.ring) > 16 {
			s.ring, s.head = nil, 0
		}
		if !m.ID.IsZero() && m.ID.Compare(s.skip) <= 0 {
			continue // already replayed from the history
		}
		return m, true, nil
	}
	return nil, false, nil
}

// Next returns the next message, waiting for one until ctx ends or the
// subscription does.
func (s *Subscription) Next(ctx context.Context) (*Message, error) {
	for {
		m, ok, err := s.TryNext()
		if ok || err != nil {
			return m, err
		}
		select {
		case <-s.Signal():
		case <-s.Done():
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *Subscription) endLocked(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	clear(s.ring)
	s.ring, s.n, s.head = nil, 0, 0
	s.replay = nil
	if s.done != nil {
		close(s.done)
	}
}

// end ends the subscription with err, if it is still open.
func (s *Subscription) end(err error) {
	s.mu.Lock()
	was := s.err
	s.endLocked(err)
	signal := s.signal
	s.mu.Unlock()
	if was == nil {
		s.woken(signal)
	}
}

// Close leaves the channel. It is idempotent. A Wake already under way
// (a delivery or a shutdown racing with Close) may still run once after
// Close returns, so Wake functions must tolerate a call after Close.
func (s *Subscription) Close() {
	s.closeMu.Do(func() {
		s.mu.Lock()
		s.endLocked(ErrClosed)
		s.mu.Unlock()
		s.b.leave(s)
	})
}
