package redisstore_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/redisstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
	"github.com/postern/postern/internal/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }

func open(t testing.TB, url string, c *storetest.Clock) *redisstore.Store {
	t.Helper()
	opts := redisstore.Options{}
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
