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

// TestContractOnCluster runs the contract suite on a real Redis Cluster
// (three masters with a replica each, shared by the package's tests),
// where a script whose keys span slots fails: every key of one queue,
// history or directory entry must carry one hash tag. Queues, fan-out and
// the directory spread over every master.
func TestContractOnCluster(t *testing.T) {
	url := redistest.ClusterURL(t)
	c, _ := raw(t, url)
	if c.Mode() != rueidis.ClientModeCluster {
		t.Fatalf("client mode %q, want cluster", c.Mode())
	}
	if n := len(c.Nodes()); n < 3 {
		t.Fatalf("the client knows %d nodes, want every master", n)
	}
	crossSlot := c.B().Arbitrary("EVAL").Args("return redis.call('MSET', KEYS[1], 1, KEYS[2], 2)", "2", "{a}x", "{b}x").Build()
	if err := c.Do(ctx, crossSlot).Error(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("cross-slot script on the cluster: %v, want CROSSSLOT", err)
	}
	t.Run("Directory", func(t *testing.T) { testDirectory(t, redistest.ClusterURL(t)) })
	t.Run("Fanout", func(t *testing.T) { testFanoutAcrossNodes(t, redistest.ClusterURL(t)) })
	urls := map[store.Engine]string{}
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T, c *storetest.Clock) store.Engine {
			url := redistest.ClusterURL(t)
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
