package redisstore

import (
	"context"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/postern/postern/internal/store"
)

// subscribeBatch bounds the channels of one SUBSCRIBE or UNSUBSCRIBE.
const subscribeBatch = 256

// fanout owns the Store's one pub/sub connection. Subscribers are kept by
// channel; one goroutine (run) keeps the connection's subscriptions equal
// to the channels that have subscribers, and after a lost connection
// reconnects and subscribes them all again. Payloads are handed to
// subscribers on the connection's reading goroutine, in arrival order.
type fanout struct {
	s            *Store
	reconnectMax time.Duration

	mu        sync.RWMutex
	subs      map[string][]*subscriber // channel -> subscribers, copy on write
	nextID    uint64
	connected bool
	waiters   []chan struct{} // closed by the next reconcile

	kick  chan struct{} // cap 1: subscriptions changed
	stop  chan struct{}
	done  chan struct{}
	ready chan struct{} // closed after the first connection attempt
	once  sync.Once
}

type subscriber struct {
	id uint64
	fn func([]byte)
}

func newFanout(s *Store, reconnectMax time.Duration) *fanout {
	f := &fanout{
		s:            s,
		reconnectMax: reconnectMax,
		subs:         make(map[string][]*subscriber),
		kick:         make(chan struct{}, 1),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
		ready:        make(chan struct{}),
	}
	go f.run()
	<-f.ready
	return f
}

func (s *Store) channel(topic string) string { return s.prefix + "f:" + topic }

// Publish implements store.Fanout.
func (s *Store) Publish(ctx context.Context, topic string, payload []byte) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	ch := s.channel(topic)
	// On a Cluster every node relays a PUBLISH to every other, so the
	// payloads of one topic all go to one node (the one whose slot its
	// name hashes to), whose relays keep them in order.
	err := s.c.Do(ctx, s.c.B().Publish().Channel(ch).Message(string(payload)).Build().SetSlot(ch)).Error()
	return s.wrap(ctx, err)
}

// Subscribe implements store.Fanout. It returns once Redis confirmed the
// subscription, so a payload published afterwards on any node arrives. When
// Redis is unreachable it returns at once: the subscription is kept and
// made as soon as the connection is back. fn runs on the connection's
// reading goroutine: it must not block, nor call Subscribe.
func (s *Store) Subscribe(ctx context.Context, topic string, fn func(payload []byte)) (func(), error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	f := s.fan
	ch := s.channel(topic)
	f.mu.Lock()
	f.nextID++
	sub := &subscriber{id: f.nextID, fn: fn}
	f.subs[ch] = append(slices.Clone(f.subs[ch]), sub)
	var wait chan struct{}
	if f.connected {
		wait = make(chan struct{})
		f.waiters = append(f.waiters, wait)
	}
	f.mu.Unlock()
	f.poke()
	cancel := func() { f.remove(ch, sub.id) }
	if wait == nil {
		return cancel, nil
	}
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case <-wait:
	case <-t.C: // kept; made when the connection answers again
	case <-f.stop:
		return nil, store.ErrClosed
	case <-ctx.Done():
		cancel()
		return nil, ctx.Err()
	}
	return cancel, nil
}

func (f *fanout) remove(ch string, id uint64) {
	f.mu.Lock()
	subs := f.subs[ch]
	if i := slices.IndexFunc(subs, func(s *subscriber) bool { return s.id == id }); i >= 0 {
		rest := slices.Delete(slices.Clone(subs), i, i+1)
		if len(rest) == 0 {
			delete(f.subs, ch)
		} else {
			f.subs[ch] = rest
		}
	}
	f.mu.Unlock()
	f.poke()
}

func (f *fanout) poke() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// dispatch hands a payload to the channel's subscribers.
func (f *fanout) dispatch(m rueidis.PubSubMessage) {
	f.mu.RLock()
	subs := f.subs[m.Channel]
	f.mu.RUnlock()
	for _, sub := range subs {
		sub.fn([]byte(m.Message))
	}
}

func (f *fanout) close() {
	f.once.Do(func() { close(f.stop) })
	<-f.done
}

// releaseWaiters wakes every Subscribe waiting for a confirmation.
func (f *fanout) releaseWaiters() {
	f.mu.Lock()
	ws := f.waiters
	f.waiters = nil
	f.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

func (f *fanout) setConnected(up bool) {
	f.mu.Lock()
	f.connected = up
	f.mu.Unlock()
}

// run connects, serves and reconnects until stop.
func (f *fanout) run() {
	defer close(f.done)
	first := true
	delay := 10 * time.Millisecond
	for {
		up, err := f.session(&first)
		if up {
			delay = 10 * time.Millisecond
		}
		f.setConnected(false)
		f.releaseWaiters()
		if first {
			first = false
			close(f.ready)
		}
		select {
		case <-f.stop:
			return
		default:
		}
		f.s.log.Warn("redis pub/sub connection lost; reconnecting", "err", unavailable(err), "retry_in", delay)
		t := time.NewTimer(delay)
	wait:
		for {
			select {
			case <-f.stop:
				t.Stop()
				return
			case <-f.kick:
				f.releaseWaiters()
			case <-t.C:
				break wait
			}
		}
		delay = min(2*delay, f.reconnectMax)
	}
}

// session runs one connection: it subscribes every wanted channel, then
// follows changes until the connection fails or stop. It returns the
// connection's error (nil on stop) and whether it got connected.
func (f *fanout) session(first *bool) (bool, error) {
	dc, release := f.s.c.Dedicate()
	defer release()
	defer dc.Close()
	errc := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: f.dispatch})
	active := make(map[string]bool)
	if err := f.reconcile(dc, active); err != nil {
		return false, err
	}
	// From here on Subscribe waits for the reconcile its poke asks for;
	// those that came in before did not wait (nothing was connected).
	f.setConnected(true)
	if *first {
		*first = false
		close(f.ready)
	}
	f.s.log.Debug("redis pub/sub connected", "channels", len(active))
	for {
		select {
		case <-f.stop:
			return true, nil
		case err := <-errc:
			if err == nil {
				// The client closed the connection itself: on a Cluster,
				// after a topology refresh replaced it.
				err = net.ErrClosed
			}
			return true, err
		case <-f.kick:
			if err := f.reconcile(dc, active); err != nil {
				return true, err
			}
		}
	}
}

// reconcile subscribes the connection to every channel with subscribers and
// unsubscribes it from the others, then releases the Subscribe calls that
// were waiting when it looked at the subscribers: their channels are
// subscribed now. A Subscribe that comes in later waits for the next
// reconcile, which its poke asks for.
func (f *fanout) reconcile(dc rueidis.DedicatedClient, active map[string]bool) error {
	f.mu.Lock()
	var add, drop []string
	for ch := range f.subs {
		if !active[ch] {
			add = append(add, ch)
		}
	}
	for ch := range active {
		if _, ok := f.subs[ch]; !ok {
			drop = append(drop, ch)
		}
	}
	waiting := f.waiters
	f.waiters = nil
	f.mu.Unlock()
	released := false
	defer func() {
		if released {
			return
		}
		// Failed: hand the waiters back, for the reconnect to release.
		f.mu.Lock()
		f.waiters = append(f.waiters, waiting...)
		f.mu.Unlock()
	}()
	for chunk := range slices.Chunk(add, subscribeBatch) {
		ctx, cancel := context.WithTimeout(context.Background(), f.s.timeout)
		err := dc.Do(ctx, dc.B().Subscribe().Channel(chunk...).Build()).Error()
		cancel()
		if err != nil {
			return err
		}
		for _, ch := range chunk {
			active[ch] = true
		}
	}
	for chunk := range slices.Chunk(drop, subscribeBatch) {
		ctx, cancel := context.WithTimeout(context.Background(), f.s.timeout)
		err := dc.Do(ctx, dc.B().Unsubscribe().Channel(chunk...).Build()).Error()
		cancel()
		if err != nil {
			return err
		}
		for _, ch := range chunk {
			delete(active, ch)
		}
	}
	released = true
	for _, w := range waiting {
		close(w)
	}
	return nil
}

// topics returns the channels with subscribers (for tests).
func (f *fanout) topics() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Sorted(maps.Keys(f.subs))
}
