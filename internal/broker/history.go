package broker

import (
	"container/list"
	"context"
	"sync"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/ordered"
)

// lruHistory keeps the channel histories of a single node in memory: every
// channel published to records, so a subscriber that comes later can ask
// for what was said (since=0), and the channels held are bounded in number
// and in bytes, the least recently published first out.
type lruHistory struct {
	now       func() time.Time
	maxTopics int
	maxBytes  int

	mu     sync.Mutex
	topics map[string]*list.Element // values *lruTopic
	lru    list.List                // front: most recently recorded
	bytes  int                      // bodies held, all topics
	last   store.ID                 // ids increase across every topic
}

type lruTopic struct {
	name string
	h    ordered.History
	// floor is the last id recorded anywhere when the topic was (re)made:
	// an earlier copy of it may have been evicted, so a reader resuming
	// from before floor may have missed entries.
	floor store.ID
}

var _ store.History = (*lruHistory)(nil)

func newLRUHistory(maxTopics, maxBytes int, now func() time.Time) *lruHistory {
	return &lruHistory{now: now, maxTopics: maxTopics, maxBytes: maxBytes, topics: make(map[string]*list.Element)}
}

// Record implements store.History.
func (l *lruHistory) Record(ctx context.Context, topic string, m store.Message, maxLen int, ttl time.Duration) (store.ID, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	el := l.topics[topic]
	if el == nil {
		el = l.lru.PushFront(&lruTopic{name: topic, floor: l.last})
		l.topics[topic] = el
	} else {
		l.lru.MoveToFront(el)
	}
	t := el.Value.(*lruTopic)
	before := t.h.Size()
	t.h.Expire(now)
	l.last = store.NextID(l.last, now)
	e := store.Message{ID: l.last, ContentType: m.ContentType, Body: m.Body}
	if ttl > 0 {
		e.ExpiresAt = now.Add(ttl)
	}
	t.h.Add(e, maxLen)
	l.bytes += t.h.Size() - before
	l.evict(el, now)
	return e.ID, nil
}

// evict forgets the least recently recorded topics beyond the caps (never
// keep, the one just recorded), and expires the oldest topic's entries in
// passing, so that topics nobody records on again do not hold expired
// entries until they reach the end.
func (l *lruHistory) evict(keep *list.Element, now time.Time) {
	for l.lru.Len() > l.maxTopics || l.bytes > l.maxBytes {
		back := l.lru.Back()
		if back == keep {
			break
		}
		l.remove(back)
	}
	if back := l.lru.Back(); back != nil && back != keep {
		t := back.Value.(*lruTopic)
		before := t.h.Size()
		t.h.Expire(now)
		l.bytes += t.h.Size() - before
		if t.h.Empty() {
			l.remove(back)
		}
	}
}

func (l *lruHistory) remove(el *list.Element) {
	t := el.Value.(*lruTopic)
	l.bytes -= t.h.Size()
	delete(l.topics, t.name)
	l.lru.Remove(el)
}

// Since implements store.History.
func (l *lruHistory) Since(ctx context.Context, topic string, after store.ID, max int) ([]store.Message, bool, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	el := l.topics[topic]
	if el == nil {
		// Nothing is kept: a reader that saw entries before may have
		// missed some that went since.
		return nil, !after.IsZero(), nil
	}
	t := el.Value.(*lruTopic)
	before := t.h.Size()
	out, gap := t.h.Since(after, max, now)
	l.bytes += t.h.Size() - before
	if !after.IsZero() && after.Compare(t.floor) < 0 {
		gap = true
	}
	return out, gap, nil
}

// held reports the topics and bytes held.
func (l *lruHistory) held() (topics, bytes int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len(), l.bytes
}
