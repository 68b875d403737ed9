package live_test

import (
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/expose/live"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// conn is a member whose handler runs until it is closed.
type conn struct{ closed chan struct{} }

// TestCloseEndsEveryHandler: Close closes every member at once (a member
// whose close waits for the others' still ends), takes no new member
// and no new hold, and Wait returns once every handler returned.
func TestCloseEndsEveryHandler(t *testing.T) {
	var s live.Set[*conn]
	var all sync.WaitGroup
	all.Add(3)
	for range 3 {
		c := &conn{closed: make(chan struct{})}
		if !s.Add(c) {
			t.Fatal("Add refused before Close")
		}
		go func() {
			defer s.Remove(c)
			<-c.closed
		}()
	}
	if !s.Hold() {
		t.Fatal("Hold refused before Close")
	}
	go func() { defer s.Release(); all.Wait() }() // ends once all three were closed
	s.Close(func(c *conn) {
		close(c.closed)
		all.Done()
		all.Wait() // closes run at once: this one waits for the others
	})
	if s.Add(&conn{}) || s.Hold() || !s.Closing() {
		t.Fatal("the set took more after Close")
	}
	s.Wait()
}
