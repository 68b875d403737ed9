package ordered_test

import (
	"context"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/ordered"
)

// Ids recorded after Floor come after the floor, even with the clock
// behind it (a restart that reloaded larger ids).
func TestHistoriesFloor(t *testing.T) {
	now := time.Unix(1000, 0)
	h := ordered.NewHistories(func() time.Time { return now })
	floor := store.ID{MS: uint64(now.UnixMilli()) + 5000, Seq: 7}
	h.Floor(floor)
	id, err := h.Record(context.Background(), "c/a", store.Message{Body: []byte("x")}, 10, 0)
	if err != nil || id.Compare(floor) <= 0 {
		t.Fatalf("recorded %v (%v), want after %v", id, err, floor)
	}
}

// A topic whose entries all expired is forgotten by Sweep, and a reader
// who had seen entries of it is told of the gap.
func TestHistoriesSweepForgetsExpired(t *testing.T) {
	now := time.Unix(1000, 0)
	h := ordered.NewHistories(func() time.Time { return now })
	ctx := context.Background()
	id, _ := h.Record(ctx, "c/a", store.Message{Body: []byte("x")}, 10, time.Minute)
	now = now.Add(2 * time.Minute)
	h.Sweep(1 << 20)
	es, gap, err := h.Since(ctx, "c/a", id, 0)
	if err != nil || len(es) != 0 || !gap {
		t.Fatalf("after expiry: %d entries, gap %v, %v", len(es), gap, err)
	}
	es, gap, _ = h.Since(ctx, "c/a", store.ID{}, 0)
	if len(es) != 0 || gap {
		t.Fatalf("whole history after expiry: %d entries, gap %v", len(es), gap)
	}
}
