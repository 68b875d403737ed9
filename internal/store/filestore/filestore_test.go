package filestore_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/storetest"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(runCrashChild())
	}
	goleak.VerifyTestMain(m)
}

// open opens the store in dir on clock c with Options.SyncWindow window.
func open(t *testing.T, dir string, c *storetest.Clock, window int) *filestore.Store {
	t.Helper()
	s, err := filestore.Open(filestore.Options{Dir: dir, Now: c.Now, SyncWindow: window})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return s
}

// takeNow takes a message of key and settles it as delivered: a consume
// that went well.
func takeNow(e store.Engine, key string, mode store.TakeMode) (store.Message, bool, error) {
	ctx := context.Background()
	l, ok, err := e.Take(ctx, key, mode, time.Minute)
	if err == nil && ok {
		err = e.Settle(ctx, key, []store.Lease{l}, true)
	}
	return l.Message, ok, err
}

// TestContract runs the engine contract with the default sync window and
// with several batches syncing at once.
func TestContract(t *testing.T) {
	for _, window := range []int{0, 4} {
		t.Run(fmt.Sprint("SyncWindow=", window), func(t *testing.T) {
			storetest.Run(t, storetest.Harness{
				New: func(t *testing.T, c *storetest.Clock) store.Engine {
					return open(t, t.TempDir(), c, window)
				},
				Reopen: func(t *testing.T, e store.Engine, c *storetest.Clock) store.Engine {
					dir := e.(*filestore.Store).Dir()
					if err := e.Close(); err != nil {
						t.Fatalf("Close: %v", err)
					}
					return open(t, dir, c, window)
				},
			})
		})
	}
}
