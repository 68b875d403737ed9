package broker

import (
	"context"
	"strconv"
	"testing"

	"github.com/postern/postern/internal/capability"
)

// TestRecentBounded: churn on some channels while another stays recent
// does not grow the bookkeeping, and MaxRecent caps the channels kept.
func TestRecentBounded(t *testing.T) {
	b, _ := New(nil, Options{MaxRecent: 100}, capability.Deps{})
	defer b.Shutdown(context.Background())
	churn := func(name string) {
		s, err := b.Subscribe(context.Background(), name, SubscribeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	churn("/first") // stays at the front, live for the TTL
	for i := range 10000 {
		churn("/b" + strconv.Itoa(i%3))
	}
	if ch, q := b.recentLen(); ch != 4 || q > 2*ch+64 {
		t.Fatalf("%d channels, %d queue entries after churn", ch, q)
	}
	for i := range 1000 {
		churn("/many/" + strconv.Itoa(i))
	}
	if ch, q := b.recentLen(); ch > 100 || q > 2*ch+64 {
		t.Fatalf("%d channels, %d queue entries: MaxRecent is 100", ch, q)
	}
}
