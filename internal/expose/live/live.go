// Package live tracks the live connections of an expose transport (agent
// sockets, user websockets relayed by hand): a set that takes no new
// member once it closes, closes its members all at once at shutdown, and
// waits for their handlers, so that every connection has an owner and a
// way to stop.
package live

import "sync"

// Set is the live connections of one transport. The zero value is ready.
type Set[T comparable] struct {
	mu      sync.Mutex
	closing bool
	members map[T]struct{}
	wg      sync.WaitGroup // the members' handlers, and Hold's
}

// Add makes x a member whose handler runs until Remove; false (and
// nothing added) once the set is closing.
func (s *Set[T]) Add(x T) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.members == nil {
		s.members = make(map[T]struct{})
	}
	s.members[x] = struct{}{}
	s.wg.Add(1)
	return true
}

// Remove ends x's membership, when its handler returns.
func (s *Set[T]) Remove(x T) {
	s.mu.Lock()
	delete(s.members, x)
	s.mu.Unlock()
	s.wg.Done()
}

// Hold counts in a handler that has no member of its own (it rides on
// one): false once the set is closing. Release ends it.
func (s *Set[T]) Hold() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	return true
}

// Release ends what Hold counted in.
func (s *Set[T]) Release() { s.wg.Done() }

// Close takes no new members and runs close on each member at once,
// waiting for all of them. It may be called again (the members still
// there are closed again).
func (s *Set[T]) Close(close func(T)) {
	s.mu.Lock()
	s.closing = true
	members := make([]T, 0, len(s.members))
	for x := range s.members {
		members = append(members, x)
	}
	s.mu.Unlock()
	var closing sync.WaitGroup
	for _, x := range members {
		closing.Go(func() { close(x) })
	}
	closing.Wait()
}

// Closing reports whether Close was called.
func (s *Set[T]) Closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Wait waits for every member's handler, and every Hold, to end.
func (s *Set[T]) Wait() { s.wg.Wait() }
