package redisstore_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
	"github.com/postern/postern/internal/store/storetest"
)

// mixed is two nodes on one Redis, one on the lean path (lean.go), the
// other running every queue operation as a function: each operation goes
// to the next of them in turn, so that each hands out, settles and
// removes what the other appended and took.
type mixed struct {
	*redisstore.Store // the lean one, for History and Close
	fn                *redisstore.Store
	n                 atomic.Int64
}

func (m *mixed) next() *redisstore.Store {
	if m.n.Add(1)%2 == 0 {
		return m.fn
	}
	return m.Store
}

func (m *mixed) Append(ctx context.Context, key string, msg store.Message, opts store.AppendOptions) (store.AppendResult, error) {
	return m.next().Append(ctx, key, msg, opts)
}

func (m *mixed) Take(ctx context.Context, key string, mode store.TakeMode, d time.Duration) (store.Lease, bool, error) {
	return m.next().Take(ctx, key, mode, d)
}

func (m *mixed) TakeAll(ctx context.Context, key string, max int, d time.Duration) ([]store.Lease, error) {
	return m.next().TakeAll(ctx, key, max, d)
}

func (m *mixed) Settle(ctx context.Context, key string, ls []store.Lease, delivered bool) error {
	return m.next().Settle(ctx, key, ls, delivered)
}

func (m *mixed) Ack(ctx context.Context, key string, id store.ID) (bool, error) {
	return m.next().Ack(ctx, key, id)
}

func (m *mixed) Status(ctx context.Context, key string, id store.ID) (store.State, error) {
	return m.next().Status(ctx, key, id)
}

func (m *mixed) Len(ctx context.Context, key string) (int, error) { return m.next().Len(ctx, key) }

func (m *mixed) Clear(ctx context.Context, key string) (int, error) { return m.next().Clear(ctx, key) }

func (m *mixed) Close() error {
	m.fn.Close()
	return m.Store.Close()
}

// openMixed opens the two nodes of mixed on url. Settlings are sent at
// once, so that each node sees the other's at once, as the contract
// suite expects of one engine.
func openMixed(t *testing.T, url string, c *storetest.Clock) *mixed {
	t.Helper()
	o := func(fnOnly bool) *redisstore.Store {
		opts := redisstore.Options{Logger: slog.New(slog.DiscardHandler), Now: c.Now, SettleDelay: -1, FunctionsOnly: fnOnly}
		s, err := redisstore.Open(url, opts)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return &mixed{Store: o(false), fn: o(true)}
}

// TestContractLeanAndFunctions runs the contract suite on a lean node and
// a functions-only node sharing every queue, operation by operation, on
// one redis-server and on a Redis Cluster; and on a functions-only node
// alone.
func TestContractLeanAndFunctions(t *testing.T) {
	t.Run("server", func(t *testing.T) {
		storetest.Run(t, storetest.Harness{New: func(t *testing.T, c *storetest.Clock) store.Engine {
			return openMixed(t, redistest.URL(t), c)
		}})
	})
	t.Run("cluster", func(t *testing.T) {
		storetest.Run(t, storetest.Harness{New: func(t *testing.T, c *storetest.Clock) store.Engine {
			return openMixed(t, redistest.ClusterURL(t), c)
		}})
	})
	t.Run("functions-only", func(t *testing.T) {
		storetest.Run(t, storetest.Harness{New: func(t *testing.T, c *storetest.Clock) store.Engine {
			s, err := redisstore.Open(redistest.URL(t), redisstore.Options{Logger: slog.New(slog.DiscardHandler), Now: c.Now, FunctionsOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}})
	})
}
