package ordered

import (
	"slices"
	"strings"
	"time"
)

// Overflow returns the keys of remembered dedup keys (key -> end of its
// window) to forget so that at most max remain: none while there are at
// most max; otherwise the ones whose windows end first, down to 7/8 of
// max, so that a queue at its bound sorts its keys once every max/8
// appends rather than at every one.
func Overflow(seen map[string]time.Time, max int) []string {
	if max <= 0 || len(seen) <= max {
		return nil
	}
	type kv struct {
		k string
		t time.Time
	}
	all := make([]kv, 0, len(seen))
	for k, t := range seen {
		all = append(all, kv{k, t})
	}
	slices.SortFunc(all, func(a, b kv) int {
		if c := a.t.Compare(b.t); c != 0 {
			return c
		}
		return strings.Compare(a.k, b.k)
	})
	out := make([]string, 0, len(all)-max*7/8)
	for _, x := range all[:len(all)-max*7/8] {
		out = append(out, x.k)
	}
	return out
}
