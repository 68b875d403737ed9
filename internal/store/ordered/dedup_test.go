package ordered_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/postern/postern/internal/store/ordered"
)

func TestOverflow(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	seen := map[string]time.Time{}
	for i := range 20 {
		seen[fmt.Sprint("k", i)] = t0.Add(time.Duration(19-i) * time.Second) // k19 ends first
	}
	if got := ordered.Overflow(seen, 20); got != nil {
		t.Fatalf("at the bound: %v", got)
	}
	if got := ordered.Overflow(seen, 0); got != nil {
		t.Fatalf("no bound: %v", got)
	}
	got := ordered.Overflow(seen, 16) // down to 14
	want := []string{"k19", "k18", "k17", "k16", "k15", "k14"}
	if !slices.Equal(got, want) {
		t.Fatalf("Overflow = %v, want %v", got, want)
	}
}
