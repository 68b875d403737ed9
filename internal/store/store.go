// Package store defines the storage contract that postern's cores are built on.
//
// A storage engine (memory, embedded file, Redis) implements [Engine]: ordered
// per-key message queues with a pending set, acknowledgements, replies and
// expiry. Every operation of [Queues] is atomic on its own, so cores never
// need a lock across two calls.
//
// Messages are handed out under a lease (Take, TakeAll): invisible to
// every other taker until the lease is settled (Settle) or runs out, and
// then, unless it was delivered, back at its place in the queue. A message
// is removed, or marked pending, only when its delivery is settled, so
// nothing handed out is lost when the answer to the consumer fails, the
// engine's answer is lost, or the process dies.
//
// Engines shared by several nodes also implement [Fanout], which cores use
// for cross-node wake-ups and broadcasts.
//
// Capabilities never talk to an engine directly: they call a core
// (internal/queue, internal/broker, internal/relay), and the cores call the
// engine. The contract suite in internal/store/storetest pins down the
// behaviour every engine must show.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors an engine returns. Engines wrap them with a reason; callers test
// with errors.Is.
var (
	// ErrUnavailable means the engine cannot serve right now (Redis down,
	// disk failing). The write did not happen. HTTP: 503.
	ErrUnavailable = errors.New("storage unavailable")
	// ErrOutcomeUnknown means a write was sent to the engine and no
	// answer came (a Redis timeout or a connection lost after sending):
	// it may or may not have happened. HTTP: 503; a retry is safe when
	// the write is idempotent (an append with a dedup key, an ack).
	ErrOutcomeUnknown = errors.New("storage outcome unknown")
	// ErrNoSpace means the engine refused a write for lack of space.
	// HTTP: 507.
	ErrNoSpace = errors.New("storage full")
	// ErrClosed means the engine was closed.
	ErrClosed = errors.New("storage closed")
)

// FullError is returned by Append when AppendOptions.Limit refuses the
// message. Len is the queue length that caused the refusal.
type FullError struct{ Len int }

func (e *FullError) Error() string { return fmt.Sprintf("queue full (%d messages)", e.Len) }

// TakeMode says how Take hands a message out, and what a delivered lease
// does to it.
type TakeMode int

const (
	// TakeDelete hands out the oldest queued message; delivered, it is
	// removed. Pending messages are skipped.
	TakeDelete TakeMode = iota
	// TakePending hands out the oldest pending message again if there is
	// one (with nothing to settle); otherwise the oldest queued message,
	// which is pending from then on (Status, Reply) and, delivered, stays
	// pending until acknowledged. Not delivered, it is queued again.
	TakePending
)

// State is where a message is in its queue.
type State int

const (
	// StateNone: the message never existed, or it was consumed.
	StateNone State = iota
	// StateQueued: appended and not yet delivered (it may be under a
	// TakeDelete lease).
	StateQueued
	// StatePending: handed out in pending mode and not yet acknowledged.
	StatePending
)

// Lease is a message handed out by Take or TakeAll, to be settled with
// Settle.
type Lease struct {
	Message
	// Mode is how it was taken.
	Mode TakeMode
	// Token identifies this hand-out of the message; zero for a pending
	// message handed out again, which has nothing to settle.
	Token int64
	// Deadline is when the lease runs out: the message must be delivered
	// and settled by then, or it may be handed out again.
	Deadline time.Time
}

// Message is one entry of a queue, or a reply.
type Message struct {
	ID          ID
	ContentType string
	Body        []byte
	// DedupKey is the key the message was appended with, if any.
	DedupKey string
	// ExpiresAt is when the message stops being delivered; zero: never.
	ExpiresAt time.Time
}

// Expired reports whether m has an expiry and it has come by now.
func (m *Message) Expired(now time.Time) bool {
	return !m.ExpiresAt.IsZero() && !now.Before(m.ExpiresAt)
}

// AppendOptions controls one Append.
type AppendOptions struct {
	// Limit > 0 refuses the append with *FullError when the queue already
	// holds Limit or more messages (pending plus unseen).
	Limit int
	// MaxLen > 0 caps the queue: after appending, the oldest messages beyond
	// MaxLen are removed and counted in AppendResult.Trimmed.
	MaxLen int
	// TTL > 0 makes the message expire TTL after it was appended.
	TTL time.Duration
	// DedupKey, when not empty, identifies the message within its queue.
	// If a message with the same DedupKey is still queued (not handed out),
	// its content type, body and expiry are replaced in place and no new
	// message is appended. If one was handed out (taken, pending,
	// acknowledged) and was appended less than DedupWindow ago, nothing is
	// stored. Either way AppendResult.Duplicate is true. A message removed
	// by MaxLen, Clear or expiry is not remembered.
	DedupKey string
	// DedupWindow is how long a DedupKey is remembered, counted from the
	// append. Zero: only while the message is queued.
	DedupWindow time.Duration
	// KeepFirst, with a DedupKey, leaves a queued message with the key as
	// it is instead of replacing its content: the first of several sends
	// wins (idempotent produce). A message under a lease is never
	// replaced.
	KeepFirst bool
	// DedupMax > 0 bounds the dedup keys of delivered messages the queue
	// remembers: from this append on (the bound is the queue's until an
	// append names another), at most DedupMax remain, those whose windows
	// end first forgotten first (an engine may forget a few more at once,
	// down to 7/8 of DedupMax). A forgotten key no longer suppresses a
	// resend. Zero: no bound but the windows, or the queue's.
	DedupMax int
}

// AppendResult reports what Append did.
type AppendResult struct {
	// ID is the new message's id, or for a duplicate the id of the message
	// it matched (queued, or handed out within the dedup window).
	ID ID
	// Len is the queue length after the append (pending plus unseen).
	Len int
	// Trimmed counts messages removed because of AppendOptions.MaxLen.
	Trimmed int
	// Duplicate is true when DedupKey matched and nothing new was appended.
	Duplicate bool
}

// Queues is the queue half of the contract. Keys are opaque strings chosen by
// the cores (for example "t/<tunnel>" or "inbox/<actor>"); a key that holds
// nothing costs nothing. Ids are assigned by the engine and strictly
// increase within a key, also across restarts and after a queue was emptied.
type Queues interface {
	// Append adds a message (ContentType, Body) at the end of the queue.
	Append(ctx context.Context, key string, m Message, opts AppendOptions) (AppendResult, error)
	// Take hands out one message as mode says, under a lease of d (> 0):
	// until the lease is settled or runs out, no other Take hands it out.
	// A message whose lease ran out without being settled is queued again,
	// in its place. ok is false when there is nothing to hand out. Expired
	// messages are never handed out.
	Take(ctx context.Context, key string, mode TakeMode, d time.Duration) (l Lease, ok bool, err error)
	// TakeAll hands out up to max queued messages (max <= 0: all), oldest
	// first, as Take(TakeDelete) would, under one lease of d.
	TakeAll(ctx context.Context, key string, max int, d time.Duration) ([]Lease, error)
	// Settle ends leases of key. Delivered: each message is removed
	// (TakeDelete) or pending from then on (TakePending), and its dedup
	// key is remembered for its window; this also holds for a message
	// whose lease ran out, unless another lease holds it. Not delivered:
	// each message still under its lease is queued again, in its place.
	// Settling twice, or a message gone since, is a no-op. An engine
	// shared by several nodes may apply a delivery a few milliseconds
	// later, with its next call on key: its own calls see it at once,
	// other nodes may see the message under its lease until then.
	Settle(ctx context.Context, key string, leases []Lease, delivered bool) error
	// Ack removes the message from the pending set and the queue, whether it
	// was pending, queued, leased or unknown. It reports whether a message
	// was removed.
	Ack(ctx context.Context, key string, id ID) (bool, error)
	// Status reports where a message is.
	Status(ctx context.Context, key string, id ID) (State, error)
	// Len reports the number of pending plus unseen messages.
	Len(ctx context.Context, key string) (int, error)
	// Clear removes every message of the queue, pending or not, and reports
	// how many there were. Replies are kept.
	Clear(ctx context.Context, key string) (int, error)
	// Reply atomically acknowledges id, if it is pending (or taken in
	// pending mode and not yet settled), and stores reply for it, kept for
	// ttl. It reports false, storing nothing, when id is not pending
	// (unknown, queued, already acknowledged or replied to).
	Reply(ctx context.Context, key string, id ID, reply Message, ttl time.Duration) (bool, error)
	// TakeReply removes and returns the reply stored for id.
	TakeReply(ctx context.Context, key string, id ID) (m Message, ok bool, err error)
}

// Engine is a storage engine.
type Engine interface {
	Queues
	// Name is a short engine name for logs and metrics ("memory", "file",
	// "redis").
	Name() string
	// Ping reports whether the engine can serve; /readyz uses it.
	Ping(ctx context.Context) error
	// Close releases the engine. Calls after Close fail with ErrClosed.
	// Close is idempotent.
	Close() error
}

// Fanout is implemented by engines that several nodes share. A payload
// published on a topic is delivered to every subscriber of that topic on
// every node, the publishing node included, in publish order per publisher.
// Delivery is best effort: a node that is disconnected misses payloads.
type Fanout interface {
	Publish(ctx context.Context, topic string, payload []byte) error
	// Subscribe calls fn for each payload on topic until cancel is called.
	// fn must not block for long.
	Subscribe(ctx context.Context, topic string, fn func(payload []byte)) (cancel func(), err error)
}

// WakeTopic is the Fanout topic on which writes to queues are announced,
// with the queue's key as the payload, so that a waiter parked on one node
// is woken by a write on another.
const WakeTopic = "postern:queue:wake"

// Parker is implemented by shared engines that keep track, across nodes,
// of the waiters parked on each queue, and announce a write to a queue on
// WakeTopic themselves, in the write's own atomic step, and only while a
// waiter is parked on it: a write nobody waits for costs no wake-up.
// Appends and leases given back (Settle, not delivered) are announced;
// callers announce anything else (replies) themselves.
type Parker interface {
	// TakeOrPark is Take; when there is nothing to hand out, it also
	// records, in the same atomic step, that a waiter is parked on key
	// for park from now (a little longer, to allow for the clocks of
	// nodes that differ), so that the next append or lease given back on
	// key is announced. An announcement ends every park of its queue: a
	// waiter woken that still finds nothing parks again.
	TakeOrPark(ctx context.Context, key string, mode TakeMode, d, park time.Duration) (l Lease, ok bool, err error)
}

// History is implemented by engines that keep short, capped histories of
// broadcast topics, so that a subscriber who comes back can resume where it
// left off (the channels' "since" cursor). A history is a convenience, not a
// guarantee: entries beyond the cap or older than their TTL are gone, and
// Since says so.
type History interface {
	// Record appends m (ContentType, Body) to topic's history, keeps at most
	// maxLen entries, each for ttl (ttl <= 0: until trimmed), and returns the
	// new entry's id. Ids strictly increase per topic, across every node
	// sharing the engine.
	Record(ctx context.Context, topic string, m Message, maxLen int, ttl time.Duration) (ID, error)
	// Since returns up to max entries of topic recorded after the id after,
	// oldest first (max <= 0: all). The zero id asks for the whole history.
	// gap is true when entries recorded after after may no longer be kept
	// (trimmed or expired), so the caller knows it may have missed some; it
	// is also true for a non-zero after on a topic that keeps nothing.
	Since(ctx context.Context, topic string, after ID, max int) (entries []Message, gap bool, err error)
}

// QueueStats is a cheap snapshot of what an engine holds.
type QueueStats struct {
	Queues   int // keys holding at least one message
	Messages int // pending plus unseen messages over all keys
}

// Stats is implemented by engines that can count what they hold cheaply.
type Stats interface {
	QueueStats() QueueStats
}
