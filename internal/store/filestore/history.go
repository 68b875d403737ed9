package filestore

import (
	"context"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/ordered"
)

// Topic histories (store.History) are kept in memory only, as the memory
// engine keeps them: a history is a convenience for subscribers coming
// back, not a guarantee, and after a restart Since reports the gap to
// anyone who had seen entries before. Entry ids come from the shard's id
// counter, which starts past every id the file holds, and from the clock.

var _ store.History = (*Store)(nil)

// Record implements store.History.
func (s *Store) Record(ctx context.Context, topic string, m store.Message, maxLen int, ttl time.Duration) (store.ID, error) {
	sh, err := s.lock(topic)
	if err != nil {
		return store.ID{}, err
	}
	defer sh.mu.Unlock()
	now := s.now()
	if sh.histories == nil {
		sh.histories = make(map[string]*ordered.History)
	}
	h := sh.histories[topic]
	if h == nil {
		h = &ordered.History{}
		sh.histories[topic] = h
	}
	h.Expire(now)
	sh.lastID = store.NextID(sh.lastID, now)
	e := store.Message{ID: sh.lastID, ContentType: m.ContentType, Body: m.Body}
	if ttl > 0 {
		e.ExpiresAt = now.Add(ttl)
	}
	h.Add(e, maxLen)
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
	out, gap := h.Since(after, max, s.now())
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
		h.Expire(now)
		if h.Empty() {
			delete(sh.histories, topic)
		}
	}
}
