package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
)

// historyTests are run by Run against engines that implement store.History.
var historyTests = []struct {
	name string
	fn   func(t *testing.T, h store.History, c *Clock)
}{
	{"RecordSince", testHistoryRecordSince},
	{"Cap", testHistoryCap},
	{"TTL", testHistoryTTL},
	{"TopicsIndependent", testHistoryTopics},
	{"ConcurrentRecordersOrdered", testHistoryConcurrent},
}

func runHistory(t *testing.T, h Harness) {
	for _, tc := range historyTests {
		t.Run("History/"+tc.name, func(t *testing.T) {
			c := NewClock()
			e := h.New(t, c)
			defer e.Close()
			hist, ok := e.(store.History)
			if !ok {
				t.Skipf("%s engine does not implement store.History", e.Name())
			}
			tc.fn(t, hist, c)
		})
	}
}

func record(t *testing.T, h store.History, topic, body string, maxLen int, ttl time.Duration) store.ID {
	t.Helper()
	id, err := h.Record(ctx, topic, store.Message{ContentType: "text", Body: []byte(body)}, maxLen, ttl)
	if err != nil {
		t.Fatalf("Record(%q, %q): %v", topic, body, err)
	}
	return id
}

func since(t *testing.T, h store.History, topic string, after store.ID, max int) ([]string, bool) {
	t.Helper()
	es, gap, err := h.Since(ctx, topic, after, max)
	if err != nil {
		t.Fatalf("Since(%q, %v): %v", topic, after, err)
	}
	var out []string
	var last store.ID
	for _, e := range es {
		if e.ID.Compare(last) <= 0 {
			t.Fatalf("Since(%q): id %v not after %v", topic, e.ID, last)
		}
		last = e.ID
		out = append(out, string(e.Body))
	}
	return out, gap
}

func wantEntries(t *testing.T, got []string, gap bool, want []string, wantGap bool) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) || gap != wantGap {
		t.Fatalf("Since = %q gap=%v, want %q gap=%v", got, gap, want, wantGap)
	}
}

func testHistoryRecordSince(t *testing.T, h store.History, _ *Clock) {
	got, gap := since(t, h, "ch", store.ID{}, 0)
	wantEntries(t, got, gap, nil, false)
	a := record(t, h, "ch", "a", 10, time.Hour)
	b := record(t, h, "ch", "b", 10, time.Hour)
	record(t, h, "ch", "c", 10, time.Hour)
	if b.Compare(a) <= 0 {
		t.Fatalf("ids %v then %v", a, b)
	}
	got, gap = since(t, h, "ch", store.ID{}, 0)
	wantEntries(t, got, gap, []string{"a", "b", "c"}, false)
	got, gap = since(t, h, "ch", a, 0)
	wantEntries(t, got, gap, []string{"b", "c"}, false)
	got, gap = since(t, h, "ch", a, 1)
	wantEntries(t, got, gap, []string{"b"}, false)
	es, _, _ := h.Since(ctx, "ch", a, 1)
	if len(es) != 1 || es[0].ID != b || es[0].ContentType != "text" {
		t.Fatalf("Since entry = %+v, want id %v with its content type", es, b)
	}
	// A cursor between ids (an id this topic never had) still works.
	got, gap = since(t, h, "ch", store.ID{MS: b.MS, Seq: b.Seq}, 0)
	wantEntries(t, got, gap, []string{"c"}, false)
}

func testHistoryCap(t *testing.T, h store.History, _ *Clock) {
	var ids []store.ID
	for i := range 5 {
		ids = append(ids, record(t, h, "ch", fmt.Sprint(i), 3, time.Hour))
	}
	got, gap := since(t, h, "ch", store.ID{}, 0)
	wantEntries(t, got, gap, []string{"2", "3", "4"}, true)
	got, gap = since(t, h, "ch", ids[0], 0)
	wantEntries(t, got, gap, []string{"2", "3", "4"}, true)
	// A reader that saw "1" missed nothing: "2" is still kept.
	got, gap = since(t, h, "ch", ids[1], 0)
	wantEntries(t, got, gap, []string{"2", "3", "4"}, false)
	got, gap = since(t, h, "ch", ids[4], 0)
	wantEntries(t, got, gap, nil, false)
}

func testHistoryTTL(t *testing.T, h store.History, c *Clock) {
	a := record(t, h, "ch", "old", 10, time.Minute)
	c.Advance(30 * time.Second)
	record(t, h, "ch", "new", 10, time.Minute)
	c.Advance(45 * time.Second)
	got, gap := since(t, h, "ch", store.ID{}, 0)
	wantEntries(t, got, gap, []string{"new"}, true)
	c.Advance(time.Minute)
	got, gap = since(t, h, "ch", a, 0)
	wantEntries(t, got, gap, nil, true)
}

func testHistoryTopics(t *testing.T, h store.History, _ *Clock) {
	record(t, h, "a", "1", 10, time.Hour)
	record(t, h, "b", "2", 10, time.Hour)
	got, gap := since(t, h, "a", store.ID{}, 0)
	wantEntries(t, got, gap, []string{"1"}, false)
	got, gap = since(t, h, "b", store.ID{}, 0)
	wantEntries(t, got, gap, []string{"2"}, false)
}

func testHistoryConcurrent(t *testing.T, h store.History, _ *Clock) {
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if _, err := h.Record(ctx, "ch", store.Message{Body: []byte(fmt.Sprint(w, "-", i))}, writers*each, time.Hour); err != nil {
					t.Errorf("Record: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	got, gap := since(t, h, "ch", store.ID{}, 0) // since checks that ids increase
	if len(got) != writers*each || gap {
		t.Fatalf("got %d entries (gap %v), want %d", len(got), gap, writers*each)
	}
	// Each writer's entries are in its own order.
	next := make(map[string]int)
	for _, s := range got {
		var w, i int
		fmt.Sscanf(s, "%d-%d", &w, &i)
		k := fmt.Sprint(w)
		if next[k] != i {
			t.Fatalf("writer %d: entry %d before %d", w, i, next[k])
		}
		next[k]++
	}
}
