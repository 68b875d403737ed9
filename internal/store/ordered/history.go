package ordered

import (
	"slices"
	"time"

	"github.com/postern/postern/internal/store"
)

// History is one topic's capped history (store.History), oldest first,
// as the memory and file engines keep it in memory. The zero value is
// empty and ready to use.
type History struct {
	entries []store.Message // ExpiresAt set when recorded with a TTL
	// dropped is the newest id that was trimmed or expired; Since reports a
	// gap to readers asking for anything before it.
	dropped store.ID
	// size is the bytes of the bodies held.
	size int
}

// Size reports the bytes of the bodies the history holds.
func (h *History) Size() int { return h.size }

// Expire drops expired entries from the front. Entries are recorded in
// time order with one TTL per call, so the oldest expire first except when
// TTLs differ between calls; those linger until they reach the front or
// the cap.
func (h *History) Expire(now time.Time) {
	i := 0
	for i < len(h.entries) && h.entries[i].Expired(now) {
		i++
	}
	h.drop(i)
}

// Empty reports whether the history holds nothing (a sweep may forget it).
func (h *History) Empty() bool { return len(h.entries) == 0 }

// drop removes the n oldest entries.
func (h *History) drop(n int) {
	if n <= 0 {
		return
	}
	h.dropped = h.entries[n-1].ID
	for _, e := range h.entries[:n] {
		h.size -= len(e.Body)
	}
	clear(h.entries[:n])
	h.entries = h.entries[n:]
}

// Add appends e, whose id is above every id recorded, trimming the oldest
// entries to keep at most maxLen (at least 1).
func (h *History) Add(e store.Message, maxLen int) {
	if maxLen < 1 {
		maxLen = 1
	}
	if over := len(h.entries) + 1 - maxLen; over > 0 {
		h.drop(over)
	}
	if cap(h.entries) == len(h.entries) && len(h.entries) > 0 {
		// Compact into a fresh array so that dropped entries do not pin
		// the old one, with a quarter of maxLen to spare: a full history
		// trims one entry per Add, and without room each Add would copy
		// the whole history.
		grown := make([]store.Message, len(h.entries), min(2*len(h.entries), maxLen)+maxLen/4+1)
		copy(grown, h.entries)
		h.entries = grown
	}
	h.entries = append(h.entries, e)
	h.size += len(e.Body)
}

// Since returns a copy of up to max entries (all when max <= 0) with ids
// above after, once expired ones are dropped, and whether entries after
// after were dropped before the reader could see them.
func (h *History) Since(after store.ID, max int, now time.Time) ([]store.Message, bool) {
	h.Expire(now)
	gap := h.dropped.Compare(after) > 0
	lo, _ := slices.BinarySearchFunc(h.entries, after, func(m store.Message, id store.ID) int {
		if m.ID.Compare(id) <= 0 {
			return -1
		}
		return 1
	})
	rest := h.entries[lo:]
	if max > 0 && len(rest) > max {
		rest = rest[:max]
	}
	out := make([]store.Message, len(rest))
	copy(out, rest)
	return out, gap
}
