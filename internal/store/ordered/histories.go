package ordered

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/postern/postern/internal/store"
)

// histShards spreads topics over locks, so that unrelated topics never
// contend.
const histShards = 64

// sweepTopics is how many other topics of its shard one Record looks at
// for expired entries, so that topics nobody records to any more are
// forgotten without a goroutine of their own.
const sweepTopics = 2

// Histories is a store.History kept in memory: every topic's capped
// History, spread over shards each with its own lock and id counter. The
// memory and file engines keep their histories in one, and so does the
// broker when its engine keeps none.
type Histories struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [histShards]histShard
}

type histShard struct {
	mu     sync.Mutex
	lastID store.ID
	topics map[string]*History
}

var _ store.History = (*Histories)(nil)

// NewHistories returns empty histories on the clock now (nil: time.Now).
func NewHistories(now func() time.Time) *Histories {
	if now == nil {
		now = time.Now
	}
	h := &Histories{now: now, seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].topics = make(map[string]*History)
	}
	return h
}

// Floor makes every id recorded from now on come after id: an engine
// that reloads its data gives the largest id it holds, so that a reader's
// cursor from before a restart stays behind new entries.
func (h *Histories) Floor(id store.ID) {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		if id.Compare(sh.lastID) > 0 {
			sh.lastID = id
		}
		sh.mu.Unlock()
	}
}

func (h *Histories) shard(topic string) *histShard {
	return &h.shards[maphash.String(h.seed, topic)%histShards]
}

// Record implements store.History.
func (h *Histories) Record(_ context.Context, topic string, m store.Message, maxLen int, ttl time.Duration) (store.ID, error) {
	sh := h.shard(topic)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := h.now()
	sh.sweep(now, sweepTopics)
	t := sh.topics[topic]
	if t == nil {
		t = &History{}
		sh.topics[topic] = t
	}
	t.Expire(now)
	sh.lastID = store.NextID(sh.lastID, now)
	e := store.Message{ID: sh.lastID, ContentType: m.ContentType, Body: m.Body}
	if ttl > 0 {
		e.ExpiresAt = now.Add(ttl)
	}
	t.Add(e, maxLen)
	return e.ID, nil
}

// Since implements store.History.
func (h *Histories) Since(_ context.Context, topic string, after store.ID, max int) ([]store.Message, bool, error) {
	sh := h.shard(topic)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := sh.topics[topic]
	if t == nil {
		// Nothing is kept: a reader that saw entries before may have
		// missed some that expired since.
		return nil, !after.IsZero(), nil
	}
	out, gap := t.Since(after, max, h.now())
	return out, gap, nil
}

// Sweep drops expired entries of up to limit topics of every shard, and
// forgets the topics left empty (their ids stay increasing: they come
// from the shard's counter).
func (h *Histories) Sweep(limit int) {
	now := h.now()
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		sh.sweep(now, limit)
		sh.mu.Unlock()
	}
}

// sweep is Sweep for one shard; sh.mu must be held.
func (sh *histShard) sweep(now time.Time, limit int) {
	n := 0
	for topic, t := range sh.topics {
		if n++; n > limit {
			return
		}
		t.Expire(now)
		if t.Empty() {
			delete(sh.topics, topic)
		}
	}
}
