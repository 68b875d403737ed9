// Package ordered owns the in-memory structures in id order that the
// memory and file engines share: a queue's index (Queue: entries in one
// slice, taken from the front in O(1) as the slice's head moves, the space
// behind it reclaimed once it is most of the slice, found by binary
// search) and a topic's capped history (History), with Histories, a
// store.History of many topics kept in memory. Queue and History hold no
// lock (their owner's lock guards them); Histories locks per shard.
package ordered

import (
	"slices"

	"github.com/postern/postern/internal/store"
)

// Entry is what a Queue holds: anything with a message id.
type Entry interface {
	MessageID() store.ID
}

// compactAfter is how many taken slots the head must pass before the live
// part is moved back to the slice's start (and then only when the taken
// slots are more than half of it).
const compactAfter = 32

// Queue is one queue's entries in id order. The zero value is empty and
// ready to use.
type Queue[E Entry] struct {
	items []E // items[head:] are live
	head  int
}

// Live returns the live entries, oldest first. The slice is the queue's:
// valid until the next change.
func (q *Queue[E]) Live() []E { return q.items[q.head:] }

// Len is how many entries are live.
func (q *Queue[E]) Len() int { return len(q.items) - q.head }

// Last returns the newest entry.
func (q *Queue[E]) Last() (E, bool) {
	if q.Len() == 0 {
		var zero E
		return zero, false
	}
	return q.items[len(q.items)-1], true
}

// Push appends e, whose id must be above every id in the queue (or call
// Sort before the queue is used).
func (q *Queue[E]) Push(e E) { q.items = append(q.items, e) }

// Sort puts the live entries back in id order after Pushes out of order.
func (q *Queue[E]) Sort() {
	slices.SortFunc(q.Live(), func(a, b E) int { return a.MessageID().Compare(b.MessageID()) })
}

// Find returns the index in Live of id, or where it would go.
func (q *Queue[E]) Find(id store.ID) (int, bool) {
	l := q.Live()
	i, found := slices.BinarySearchFunc(l, id, func(e E, id store.ID) int { return e.MessageID().Compare(id) })
	return i, found
}

// RemoveAt removes and returns Live()[i].
func (q *Queue[E]) RemoveAt(i int) E {
	var zero E
	if i == 0 {
		e := q.items[q.head]
		q.items[q.head] = zero
		q.head++
		if q.head > compactAfter && q.head*2 > len(q.items) {
			n := copy(q.items, q.items[q.head:])
			clear(q.items[n:])
			q.items = q.items[:n]
			q.head = 0
		}
		return e
	}
	j := q.head + i
	e := q.items[j]
	copy(q.items[j:], q.items[j+1:])
	q.items[len(q.items)-1] = zero
	q.items = q.items[:len(q.items)-1]
	return e
}

// InsertAt inserts e at Live()[i].
func (q *Queue[E]) InsertAt(i int, e E) {
	if i == 0 && q.head > 0 {
		q.head--
		q.items[q.head] = e
		return
	}
	var zero E
	j := q.head + i
	q.items = append(q.items, zero)
	copy(q.items[j+1:], q.items[j:])
	q.items[j] = e
}
