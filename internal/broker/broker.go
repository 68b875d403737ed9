// Package broker is the core behind channels: it fans messages published on
// a channel out to the channel's live subscribers, each through a bounded
// queue, and keeps a short history per channel so that a subscriber who
// comes back can resume after the last message it saw.
//
// A subscriber that falls behind by more than its queue holds is dropped
// (its Subscription ends with ErrSlow) and counted; nobody else waits for
// it. Channel state exists only while a channel has subscribers: the last
// one to leave removes it, under the same lock that a joining subscriber
// takes, so a channel that still has subscribers is never forgotten.
//
// On a single node (an engine without store.Fanout) a publish is delivered
// directly to the local subscribers. On an engine with store.Fanout a
// publish goes out through it only, and every node, the publishing one
// included, delivers to its local subscribers when the payload comes back:
// all subscribers of a channel, on every node, see one order.
//
// History goes through store.History: with store.Fanout the engine's (every
// node must see one history), otherwise the broker's own in memory, where
// every channel published to records and the channels held are bounded in
// number and bytes (least recently published out first).
package broker

import (
	"context"
	"errors"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/store"
)

// Defaults of a Broker.
const (
	// DefaultQueueLen is each subscriber's send queue, as in pinghub.
	DefaultQueueLen = 256
	// DefaultHistoryLen is how many messages each channel's history keeps.
	DefaultHistoryLen = 100
	// DefaultHistoryTTL is how long a history entry is kept.
	DefaultHistoryTTL = 5 * time.Minute
	// DefaultMaxHistoryChannels bounds how many channels a single node
	// keeps histories for (see Options.MaxHistoryChannels).
	DefaultMaxHistoryChannels = 10000
	// DefaultMaxHistoryBytes bounds the message bytes of those histories.
	DefaultMaxHistoryBytes = 64 << 20
)

// FanoutTopicPrefix starts the store.Fanout topic of every channel.
const FanoutTopicPrefix = "postern:channel:"

// historyKey is the store.History topic of a channel.
func historyKey(channel string) string { return "c/" + channel }

// Errors of the broker.
var (
	// ErrSlow ends a subscription whose queue overflowed.
	ErrSlow = errors.New("subscriber too slow: send queue full")
	// ErrShuttingDown ends subscriptions when the broker shuts down, and
	// refuses new ones.
	ErrShuttingDown = errors.New("broker shutting down")
	// ErrClosed is returned by Next after Close.
	ErrClosed = errors.New("subscription closed")
)

// Options configures a Broker.
type Options struct {
	// QueueLen is each subscriber's queue length; 0 means DefaultQueueLen.
	QueueLen int
	// HistoryLen is how many messages a channel's history keeps; 0 means
	// DefaultHistoryLen, negative disables history (messages carry no id).
	HistoryLen int
	// HistoryTTL is how long history entries are kept; 0 means
	// DefaultHistoryTTL.
	HistoryTTL time.Duration
	// MaxHistoryChannels and MaxHistoryBytes bound the histories a single
	// node keeps (an engine without store.Fanout): every channel published
	// to records, and beyond either cap the channel least recently
	// published to is forgotten (a subscriber resuming on it is told of
	// the gap), so a flood of posts to random paths costs bounded memory.
	// 0 means DefaultMaxHistoryChannels, DefaultMaxHistoryBytes. With
	// store.Fanout the engine's cap and TTL bound the histories.
	MaxHistoryChannels int
	MaxHistoryBytes    int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Validate fills the settings left zero with their defaults; no setting
// is refused (a negative HistoryLen turns history off).
func (o *Options) Validate() error {
	if o.QueueLen <= 0 {
		o.QueueLen = DefaultQueueLen
	}
	if o.HistoryLen == 0 {
		o.HistoryLen = DefaultHistoryLen
	}
	if o.HistoryTTL <= 0 {
		o.HistoryTTL = DefaultHistoryTTL
	}
	if o.MaxHistoryChannels <= 0 {
		o.MaxHistoryChannels = DefaultMaxHistoryChannels
	}
	if o.MaxHistoryBytes <= 0 {
		o.MaxHistoryBytes = DefaultMaxHistoryBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// Message is one message of a channel. Messages handed to subscribers are
// shared between them and must not be modified.
type Message struct {
	// ID is the message's history id; zero when history is off, or when the
	// message was sent to one subscriber only.
	ID store.ID
	// Binary is true for messages that came as binary websocket frames.
	Binary bool
	// Body is the message.
	Body []byte

	// wire holds the message's wire forms once transports made them; nil
	// for messages that are not shared (replays, Deliver).
	wire *wireForms
}

// WireForms is how many wire forms (see Message.Wire) a message keeps:
// the channels' websocket frame, its envelope frame and its event-stream
// event.
const WireForms = 3

type wireForms [WireForms]atomic.Pointer[[]byte]

// shared returns a message to hand to many subscribers: one that keeps
// its wire forms.
func shared(m Message) *Message {
	return &Message{ID: m.ID, Binary: m.Binary, Body: m.Body, wire: new(wireForms)}
}

// Wire returns form i (below WireForms) of the message as a transport
// sends it: encode makes it the first time any subscriber's transport
// asks, and a message published to N subscribers is then encoded once,
// not N times. encode must depend only on the message (for a given i).
// The result is shared and must not be modified.
func (m *Message) Wire(i int, encode func(*Message) []byte) []byte {
	if m.wire == nil {
		return encode(m)
	}
	f := &m.wire[i]
	if p := f.Load(); p != nil {
		return *p
	}
	b := encode(m)
	if f.CompareAndSwap(nil, &b) {
		return b
	}
	return *f.Load()
}

// Content types under which messages are recorded in the history.
const (
	contentText   = "text/plain; charset=utf-8"
	contentBinary = "application/octet-stream"
)

const numShards = 64

// Broker is the channels core. It is safe for concurrent use.
type Broker struct {
	opts     Options
	fan      store.Fanout  // nil: local delivery
	hist     store.History // nil: history off
	ownHist  *lruHistory   // the node's own, without store.Fanout
	seed     maphash.Seed
	shards   [numShards]shard
	pubLocks [numShards]sync.Mutex // orders record+deliver per channel

	closed    atomic.Bool
	closeOnce sync.Once

	m *metrics
}

type shard struct {
	mu       sync.Mutex
	channels map[string]*channel
	// changed, when not nil, is closed at the next membership change; only
	// WaitForSubscribers creates it.
	changed chan struct{}
}

// channel is one channel with at least one subscriber (or one joining).
type channel struct {
	name string
	key  string // history key
	// refs counts subscribers joined or joining; guarded by the shard lock.
	// The channel leaves the map when it drops to zero.
	refs int

	// ready is closed once the fan-out subscription is in place (at once
	// on single-node engines); err is then its outcome.
	ready  chan struct{}
	err    error
	cancel func()

	mu   sync.Mutex // guards subs; delivery holds it
	subs []*Subscription
}

// New returns a broker on st, its metrics on deps.Registry. st may be nil:
// then delivery is local and the history private.
func New(st store.Engine, opts Options, deps capability.Deps) (*Broker, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	b := &Broker{
		opts: opts,
		seed: maphash.MakeSeed(),
	}
	for i := range b.shards {
		b.shards[i].channels = make(map[string]*channel)
	}
	if st != nil {
		b.fan, _ = st.(store.Fanout)
	}
	if opts.HistoryLen > 0 {
		if h, ok := st.(store.History); ok && b.fan != nil {
			b.hist = h
		} else {
			b.ownHist = newLRUHistory(opts.MaxHistoryChannels, opts.MaxHistoryBytes, opts.Now)
			b.hist = b.ownHist
		}
	}
	b.m = newMetrics(deps.Registry, b)
	return b, nil
}

// Shutdown ends every subscription with ErrShuttingDown and refuses new
// subscriptions and publishes. It is idempotent.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		var subs []*Subscription
		for i := range b.shards {
			sh := &b.shards[i]
			sh.mu.Lock()
			for _, ch := range sh.channels {
				ch.mu.Lock()
				subs = append(subs, ch.subs...)
				ch.mu.Unlock()
			}
			sh.mu.Unlock()
		}
		for _, s := range subs {
			s.end(ErrShuttingDown)
		}
	})
	return nil
}

func (b *Broker) shardIndex(name string) int {
	return int(maphash.String(b.seed, name) % numShards)
}

// PublishResult reports what Publish did.
type PublishResult struct {
	// ID is the message's history id (zero when history is off or the
	// channel records none).
	ID store.ID
	// Delivered is the number of local subscribers the message was queued
	// for; with store.Fanout it is -1 (delivery happens on receipt).
	Delivered int
}

// Publish sends m (Body, Binary) to every subscriber of channel. A channel
// without subscribers drops it (counted). Errors come from the engine
// (history or fan-out): the message was not published.
func (b *Broker) Publish(ctx context.Context, channel string, m Message) (PublishResult, error) {
	if b.closed.Load() {
		return PublishResult{}, ErrShuttingDown
	}
	lock := &b.pubLocks[b.shardIndex(channel)]
	lock.Lock()
	defer lock.Unlock()
	msg := shared(Message{Binary: m.Binary, Body: m.Body})
	if b.hist != nil {
		ct := contentText
		if m.Binary {
			ct = contentBinary
		}
		id, err := b.hist.Record(ctx, historyKey(channel), store.Message{ContentType: ct, Body: m.Body}, b.opts.HistoryLen, b.opts.HistoryTTL)
		if err != nil {
			return PublishResult{}, err
		}
		msg.ID = id
	}
	if b.fan != nil {
		if err := b.fan.Publish(ctx, FanoutTopicPrefix+channel, encodePayload(msg)); err != nil {
			return PublishResult{}, err
		}
		b.m.published.Inc()
		return PublishResult{ID: msg.ID, Delivered: -1}, nil
	}
	b.m.published.Inc()
	sh := &b.shards[b.shardIndex(channel)]
	sh.mu.Lock()
	ch := sh.channels[channel]
	sh.mu.Unlock()
	n := 0
	if ch != nil {
		n = ch.deliver(msg)
	}
	if n == 0 {
		b.m.unheard.Inc()
	}
	b.m.delivered.Add(float64(n))
	return PublishResult{ID: msg.ID, Delivered: n}, nil
}

// receive is the fan-out callback of ch: it delivers one payload to the
// local subscribers.
func (b *Broker) receive(ch *channel, payload []byte) {
	msg, err := decodePayload(payload)
	if err != nil {
		b.m.malformed.Inc()
		return
	}
	n := ch.deliver(msg)
	if n == 0 {
		b.m.unheard.Inc()
	}
	b.m.delivered.Add(float64(n))
}

// deliver queues msg for every subscriber of ch and reports for how many.
func (ch *channel) deliver(msg *Message) int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	n := 0
	for _, s := range ch.subs {
		if s.push(msg) {
			n++
		}
	}
	return n
}

// SubscribeOptions controls Subscribe.
type SubscribeOptions struct {
	// Since, when not nil, asks for the history entries recorded after it
	// (the zero id: the whole history) before live messages.
	Since *store.ID
	// Wake, when not nil, is called each time the subscription's queue goes
	// from empty to non-empty and when the subscription ends. It must not
	// block. Transports that start a writer on demand use it instead of
	// blocking in Next.
	Wake func()
}

// Subscribe joins channel. The subscription receives every message
// published after Subscribe returned, and with opts.Since first the
// history after it. Close it when done.
func (b *Broker) Subscribe(ctx context.Context, channel string, opts SubscribeOptions) (*Subscription, error) {
	if b.closed.Load() {
		return nil, ErrShuttingDown
	}
	s := newSubscription(b, channel, b.opts.QueueLen, opts.Wake)
	ch, err := b.join(ctx, channel, s)
	if err != nil {
		return nil, err
	}
	s.ch = ch
	if opts.Since != nil {
		if err := s.loadReplay(ctx, *opts.Since); err != nil {
			s.Close()
			return nil, err
		}
	}
	b.m.subscribed.Inc()
	return s, nil
}

// join adds s to channel's subscribers, creating the channel (and its
// fan-out subscription) if it has none.
func (b *Broker) join(ctx context.Context, name string, s *Subscription) (*channel, error) {
	sh := &b.shards[b.shardIndex(name)]
	sh.mu.Lock()
	ch := sh.channels[name]
	creator := ch == nil
	if creator {
		ch = &channel{name: name, key: historyKey(name), ready: make(chan struct{})}
		sh.channels[name] = ch
		b.m.channels.Inc()
	}
	ch.refs++
	sh.mu.Unlock()

	if creator {
		if b.fan != nil {
			ch.cancel, ch.err = b.fan.Subscribe(context.WithoutCancel(ctx), FanoutTopicPrefix+name, func(p []byte) { b.receive(ch, p) })
		}
		close(ch.ready)
	} else {
		select {
		case <-ch.ready:
		case <-ctx.Done():
			b.release(sh, ch)
			return nil, ctx.Err()
		}
	}
	if ch.err != nil {
		b.release(sh, ch)
		return nil, ch.err
	}
	ch.mu.Lock()
	s.idx = len(ch.subs)
	ch.subs = append(ch.subs, s)
	ch.mu.Unlock()
	b.m.subscribers.Inc()
	b.notify(sh)
	if b.closed.Load() {
		// Shutdown may have collected the subscribers before s joined.
		s.end(ErrShuttingDown)
	}
	return ch, nil
}

// leave removes s from its channel.
func (b *Broker) leave(s *Subscription) {
	ch := s.ch
	sh := &b.shards[b.shardIndex(ch.name)]
	ch.mu.Lock()
	if s.idx >= 0 && s.idx < len(ch.subs) && ch.subs[s.idx] == s {
		last := len(ch.subs) - 1
		ch.subs[s.idx] = ch.subs[last]
		ch.subs[s.idx].idx = s.idx
		ch.subs[last] = nil
		ch.subs = ch.subs[:last]
		if cap(ch.subs) > 64 && len(ch.subs) < cap(ch.subs)/4 {
			ch.subs = append([]*Subscription(nil), ch.subs...)
		}
		s.idx = -1
		b.m.subscribers.Dec()
	}
	ch.mu.Unlock()
	b.release(sh, ch)
	b.notify(sh)
}

// release drops one reference to ch, forgetting the channel at zero.
func (b *Broker) release(sh *shard, ch *channel) {
	sh.mu.Lock()
	ch.refs--
	last := ch.refs == 0
	if last && sh.channels[ch.name] == ch {
		delete(sh.channels, ch.name)
		b.m.channels.Dec()
	}
	sh.mu.Unlock()
	if !last {
		return
	}
	<-ch.ready
	if ch.cancel != nil {
		ch.cancel()
	}
}

func (b *Broker) notify(sh *shard) {
	sh.mu.Lock()
	if sh.changed != nil {
		close(sh.changed)
		sh.changed = nil
	}
	sh.mu.Unlock()
}

// Subscribers reports the number of local subscribers of channel.
func (b *Broker) Subscribers(channel string) int {
	sh := &b.shards[b.shardIndex(channel)]
	sh.mu.Lock()
	ch := sh.channels[channel]
	sh.mu.Unlock()
	if ch == nil {
		return 0
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return len(ch.subs)
}

// WaitForSubscribers blocks until channel has exactly n local subscribers,
// or ctx ends: the readiness signal for tests and tools that must know a
// subscription is in place before they publish.
func (b *Broker) WaitForSubscribers(ctx context.Context, channel string, n int) error {
	sh := &b.shards[b.shardIndex(channel)]
	for {
		if b.Subscribers(channel) == n {
			return nil
		}
		sh.mu.Lock()
		if sh.changed == nil {
			sh.changed = make(chan struct{})
		}
		ch := sh.changed
		sh.mu.Unlock()
		// The count may have changed between the check and the wait.
		if b.Subscribers(channel) == n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Stats is a snapshot of the broker.
type Stats struct {
	Channels    int    `json:"channels"`
	Subscribers int    `json:"subscribers"`
	Published   uint64 `json:"published"`
	Delivered   uint64 `json:"delivered"`
	Unheard     uint64 `json:"unheard"`
	Slow        uint64 `json:"slow_dropped"`
	// Fanout is true when publishes go through the engine's fan-out.
	Fanout bool `json:"fanout"`
	// History is "engine", "memory" or "off".
	History string `json:"history"`
	// HistoryChannels and HistoryBytes are what a node's own history
	// holds (zero with the engine's).
	HistoryChannels int `json:"history_channels"`
	HistoryBytes    int `json:"history_bytes"`
}

// Stats reports what the broker holds and has done.
func (b *Broker) Stats() Stats {
	st := Stats{Fanout: b.fan != nil, History: "off"}
	switch {
	case b.ownHist != nil:
		st.History = "memory"
		st.HistoryChannels, st.HistoryBytes = b.ownHist.held()
	case b.hist != nil:
		st.History = "engine"
	}
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		st.Channels += len(sh.channels)
		for _, ch := range sh.channels {
			ch.mu.Lock()
			st.Subscribers += len(ch.subs)
			ch.mu.Unlock()
		}
		sh.mu.Unlock()
	}
	st.Published = b.m.count(b.m.published)
	st.Delivered = b.m.count(b.m.delivered)
	st.Unheard = b.m.count(b.m.unheard)
	st.Slow = b.m.count(b.m.slow)
	return st
}
