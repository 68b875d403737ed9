package filestore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
)

// BenchmarkAppendParallel measures durable appends from many goroutines,
// which share syncs.
func BenchmarkAppendParallel(b *testing.B) {
	s, err := filestore.Open(filestore.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := []byte(strings.Repeat("x", 200))
	b.SetParallelism(16)
	n := 0
	b.RunParallel(func(pb *testing.PB) {
		n++
		key := fmt.Sprintf("t/b%d", n)
		for pb.Next() {
			if _, err := s.Append(context.Background(), key, store.Message{Body: body}, store.AppendOptions{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
