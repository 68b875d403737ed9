// Package memstore is the in-memory storage engine: fast, shared by nothing,
// and gone when the process exits. It is meant for tests and throwaway
// relays; the embedded file engine is the durable default.
//
// It is the shared queue index (internal/store/index) with a backend that
// keeps every body in memory and records nothing: queue order, pending
// messages, replies, dedup keys, expiry, sweeping and topic histories are
// the index's.
package memstore

import (
	"context"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/index"
)

// DefaultSweepInterval is how often expired messages, replies and
// remembered dedup keys are removed in the background.
const DefaultSweepInterval = index.DefaultSweepInterval

// Options configures a Store.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// SweepInterval is how often expired data is removed; zero means
	// DefaultSweepInterval, negative disables the background sweep.
	SweepInterval time.Duration
}

// Store is the memory engine.
type Store struct {
	*index.Index
}

var (
	_ store.Engine  = (*Store)(nil)
	_ store.History = (*Store)(nil)
	_ store.Stats   = (*Store)(nil)
)

// New returns a running memory store. Close stops its background sweep.
func New(opts Options) *Store {
	s := &Store{Index: index.New(index.Memory{}, opts.Now)}
	s.Start(opts.SweepInterval)
	return s
}

// Name implements store.Engine.
func (s *Store) Name() string { return "memory" }

// Ping implements store.Engine.
func (s *Store) Ping(context.Context) error {
	if s.Closed() {
		return store.ErrClosed
	}
	return nil
}

// Close implements store.Engine.
func (s *Store) Close() error {
	s.Index.Close()
	return nil
}
