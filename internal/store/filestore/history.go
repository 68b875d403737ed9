package filestore

import (
	"context"
	"time"

	"github.com/postern/postern/internal/store"
)

// Topic histories (store.History) are kept in memory only, as the memory
// engine keeps them: a history is a convenience for subscribers coming
// back, not a guarantee, and after a restart Since reports the gap to
// anyone who had seen entries before. Entry ids come from the shard's id
// counter, which starts past every id the file holds, and from the clock.

var _ store.History = (*Store)(nil)

// history is one topic's capped history, oldest first.
type history struct {
	entries []store.Message // ExpiresAt set when recorded with a TTL
	// dropped is the newest id that was trimmed or expired; Since reports a
	// gap to readers asking for anything before it.
	dropped store.ID
}

// expire drops expired entries from the front.
func (h *history) expire(now time.Time) {
	i := 0
	for i < len(h.entries) && expired(&h.entries[i], now) {
		i++
	}
	h.drop(i)
}

// drop removes the n oldest entries.
func (h *history) drop(n int) {
	if n <= 0 {
		return
	}
	h.dropped = h.entries[n-1].ID
	clear(h.entries[:n])
	h.entries = h.entries[n:]
}

// Record implements store.History.
func (s *Store) Record(ctx context.Context, topic string, m store.Message, maxLen int, ttl time.Duration) (store.ID, error) {
	sh, err := s.lock(topic)
	if err != nil {
		return store.ID{}, err
	}
	defer sh.mu.Unlock()
	now := s.now()
	if sh.histories == nil {
		sh.histories = make(map[string]*history)
	}
	h := sh.histories[topic]
	if h == nil {
		h = &history{}
		sh.histories[topic] = h
	}
	h.expire(now)
	sh.lastID = store.NextID(sh.lastID, now)
	e := store.Message{ID: sh.lastID, ContentType: m.ContentType, Body: m.Body}
	if ttl > 0 {
		e.ExpiresAt = now.Add(ttl)
	}
	if maxLen < 1 {
		maxLen = 1
	}
	if over := len(h.entries) + 1 - maxLen; over > 0 {
		h.drop(over)
	}
	if cap(h.entries) == len(h.entries) && len(h.entries) > 0 {
		// Compact into a fresh array so that dropped entries do not pin
		// the old one.
		grown := make([]store.Message, len(h.entries), min(2*len(h.entries), maxLen))
		copy(grown, h.entries)
		h.entries = grown
	}
	h.entries = append(h.entries, e)
	return e.ID, nil
}

// Since implements store.History.
func (s *Store) Since(ctx context.Context, topic string, after store.ID, max int) ([]store.Message, bool, error) {
	sh, err := s.lock(topic)
	if err != nil {
		return nil, false, err
	}
	defer sh.mu.Unlock()
	h := sh.histories[topic]
	if h == nil {
		return nil, !after.IsZero(), nil
	}
	h.expire(s.now())
	gap := h.dropped.Compare(after) > 0
	lo, hi := 0, len(h.entries)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if h.entries[m].ID.Compare(after) <= 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	rest := h.entries[lo:]
	if max > 0 && len(rest) > max {
		rest = rest[:max]
	}
	out := make([]store.Message, len(rest))
	copy(out, rest)
	return out, gap, nil
}

// sweepHistories forgets expired history entries of one shard, visiting at
// most sweepBatch topics; sh.mu must be held.
func (s *Store) sweepHistories(sh *shard, now time.Time) {
	n := 0
	for topic, h := range sh.histories {
		if n++; n > sweepBatch {
			return
		}
		h.expire(now)
		if len(h.entries) == 0 {
			delete(sh.histories, topic)
		}
	}
}
