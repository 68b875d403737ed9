package ordered_test

import (
	"testing"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/ordered"
)

type item struct{ id store.ID }

func (i *item) MessageID() store.ID { return i.id }

func ids(q *ordered.Queue[*item]) []uint64 {
	var out []uint64
	for _, e := range q.Live() {
		out = append(out, e.id.Seq)
	}
	return out
}

func id(n uint64) store.ID { return store.ID{MS: 1, Seq: n} }

// Entries taken from the front, put back, found and removed in the
// middle stay in id order, across the compaction of the taken slots.
func TestQueueKeepsOrder(t *testing.T) {
	var q ordered.Queue[*item]
	if _, ok := q.Last(); ok || q.Len() != 0 {
		t.Fatal("zero queue is not empty")
	}
	for n := range uint64(100) {
		q.Push(&item{id(n)})
	}
	for n := range uint64(60) { // past compactAfter and half the slice
		if e := q.RemoveAt(0); e.id != id(n) {
			t.Fatalf("took %v, want %v", e.id, id(n))
		}
	}
	if q.Len() != 40 {
		t.Fatalf("len %d", q.Len())
	}
	q.InsertAt(0, &item{id(59)}) // a restored message goes back in front
	i, found := q.Find(id(80))
	if !found || q.Live()[i].id != id(80) {
		t.Fatalf("find 80: %d %v", i, found)
	}
	if q.RemoveAt(i).id != id(80) {
		t.Fatal("removed the wrong entry")
	}
	if i, found := q.Find(id(80)); found || q.Live()[i].id != id(81) {
		t.Fatalf("80 still found, or would not go before 81: %d %v", i, found)
	}
	q.InsertAt(i, &item{id(80)})
	got := ids(&q)
	for k, n := range got {
		if n != uint64(59+k) {
			t.Fatalf("order %v", got)
		}
	}
	if last, _ := q.Last(); last.id != id(99) || len(got) != 41 {
		t.Fatalf("last %v, %d live", last.id, len(got))
	}
}

// Sort restores order after pushes out of order (an engine loading
// records from more than one file).
func TestQueueSort(t *testing.T) {
	var q ordered.Queue[*item]
	for _, n := range []uint64{3, 1, 2} {
		q.Push(&item{id(n)})
	}
	q.Sort()
	if got := ids(&q); got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("sorted %v", got)
	}
}
