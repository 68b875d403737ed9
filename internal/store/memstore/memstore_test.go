package memstore_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/memstore"
	"github.com/postern/postern/internal/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestContract(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T, c *storetest.Clock) store.Engine {
			return memstore.New(memstore.Options{Now: c.Now})
		},
	})
}
