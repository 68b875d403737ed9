package redisstore_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/redis/rueidis"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
	"github.com/postern/postern/internal/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }

func open(t testing.TB, url string, c *storetest.Clock) *redisstore.Store {
	t.Helper()
	opts := redisstore.Options{Logger: slog.New(slog.DiscardHandler)}
	if c != nil {
		opts.Now = c.Now
	}
	s, err := redisstore.Open(url, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestContract(t *testing.T) {
	urls := map[store.Engine]string{}
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T, c *storetest.Clock) store.Engine {
			url := redistest.URL(t)
			s := open(t, url, c)
			urls[s] = url
			return s
		},
		Reopen: func(t *testing.T, e store.Engine, c *storetest.Clock) store.Engine {
			url := urls[e]
			e.Close()
			s := open(t, url, c)
			urls[s] = url
			return s
		},
	})
}

// TestContractOnCluster runs the contract suite on a one-node Redis
// Cluster, where a script whose keys span slots fails: every key of one
// queue, history or directory entry must carry one hash tag.
func TestContractOnCluster(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Cluster: true})
	c, _ := raw(t, srv.URL())
	if c.Mode() != rueidis.ClientModeCluster {
		t.Fatalf("client mode %q, want cluster", c.Mode())
	}
	crossSlot := c.B().Arbitrary("EVAL").Args("return redis.call('MSET', KEYS[1], 1, KEYS[2], 2)", "2", "{a}x", "{b}x").Build()
	if err := c.Do(ctx, crossSlot).Error(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("cross-slot script on the cluster: %v, want CROSSSLOT", err)
	}
	t.Run("Directory", func(t *testing.T) { testDirectory(t, srv.URL()) })
	t.Run("Fanout", func(t *testing.T) { testFanoutAcrossNodes(t, srv.URL()) })
	urls := map[store.Engine]string{}
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T, c *storetest.Clock) store.Engine {
			url := srv.URL()
			s := open(t, url, c)
			urls[s] = url
			return s
		},
		Reopen: func(t *testing.T, e store.Engine, c *storetest.Clock) store.Engine {
			url := urls[e]
			e.Close()
			s := open(t, url, c)
			urls[s] = url
			return s
		},
	})
}
