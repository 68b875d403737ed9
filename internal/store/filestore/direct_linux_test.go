//go:build linux

package filestore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/storetest"
)

// TestDirectWritesSurviveACrash writes log records directly where the
// temporary directory's file system takes them (as ext4 and xfs do) and
// finds every acknowledged message after a crash, and the same when the
// file system refuses the first direct write: the log then falls back to
// writing through the page cache, and no write fails.
func TestDirectWritesSurviveACrash(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprint("refused=", refuse), func(t *testing.T) {
			dir := t.TempDir()
			c := storetest.NewClock()
			s := open(t, dir, c, 0)
			if !s.Direct() {
				t.Skip("the file system of the temporary directory takes no direct writes")
			}
			if refuse {
				defer filestore.RefuseDirectWrites()()
			}
			ctx := context.Background()
			const n = 50
			for i := range n {
				if _, err := s.Append(ctx, "t/x", store.Message{Body: fmt.Appendf(nil, "m-%d", i)}, store.AppendOptions{}); err != nil {
					t.Fatalf("append %d: %v", i, err)
				}
			}
			if s.Direct() == refuse {
				t.Fatalf("direct writes on: %v, want %v", s.Direct(), !refuse)
			}
			s.Crash()
			s = open(t, dir, c, 0)
			defer s.Close()
			for i := range n {
				m, ok, err := takeNow(s, "t/x", store.TakeDelete)
				if err != nil || !ok || string(m.Body) != fmt.Sprintf("m-%d", i) {
					t.Fatalf("after the crash, message %d: %q %v %v", i, m.Body, ok, err)
				}
			}
		})
	}
}
