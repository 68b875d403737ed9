package memstore

import (
	"context"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/ordered"
)

var _ store.History = (*Store)(nil)

// Record implements store.History.
func (s *Store) Record(ctx context.Context, topic string, m store.Message, maxLen int, ttl time.Duration) (store.ID, error) {
	sh, err := s.lock(topic)
	if err != nil {
		return store.ID{}, err
	}
	defer sh.mu.Unlock()
	now := s.now()
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
		// Nothing is kept: a reader that saw entries before may have
		// missed some that expired since.
		return nil, !after.IsZero(), nil
	}
	out, gap := h.Since(after, max, s.now())
	return out, gap, nil
}

// sweepHistories forgets expired history entries of one shard, visiting at
// most sweepBatch topics; sh.mu must be held. A topic left empty is
// forgotten: its ids stay increasing because they come from the shard.
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
