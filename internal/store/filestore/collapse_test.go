package filestore

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// randomBatches makes n batches of changes to few records, each record
// changed many times, so that the order of changes decides the outcome.
func randomBatches(rng *rand.Rand, n, per, records int) []*batch {
	var bs []*batch
	v := 0
	for range n {
		b := &batch{}
		for range per {
			m := mut{bucket: uint8(rng.IntN(int(numBuckets))), key: fmt.Appendf(nil, "k%03d", rng.IntN(records))}
			if rng.IntN(3) > 0 {
				v++
				m.val = fmt.Appendf(nil, "v%d", v)
			}
			b.muts = append(b.muts, m)
		}
		bs = append(bs, b)
	}
	return bs
}

// TestCollapseKeepsTheLastChange checks collapse against applying every
// change in turn: the last change of each record wins, in key order.
func TestCollapseKeepsTheLastChange(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		bs := randomBatches(rng, 1+rng.IntN(8), rng.IntN(40), 1+rng.IntN(30))
		last := map[string]mut{}
		for _, b := range bs {
			for _, m := range b.muts {
				last[string([]byte{m.bucket})+string(m.key)] = m
			}
		}
		var want []mut
		for _, m := range last {
			want = append(want, m)
		}
		slices.SortFunc(want, func(a, b mut) int {
			if a.bucket != b.bucket {
				return int(a.bucket) - int(b.bucket)
			}
			return bytes.Compare(a.key, b.key)
		})
		got := collapse(bs)
		if len(got) != len(want) {
			t.Fatalf("round %d: %d changes, want %d", round, len(got), len(want))
		}
		for i := range got {
			if got[i].bucket != want[i].bucket || !bytes.Equal(got[i].key, want[i].key) || !bytes.Equal(got[i].val, want[i].val) || (got[i].val == nil) != (want[i].val == nil) {
				t.Fatalf("round %d: change %d is %d %s=%q, want %d %s=%q", round, i, got[i].bucket, got[i].key, got[i].val, want[i].bucket, want[i].key, want[i].val)
			}
		}
	}
}
