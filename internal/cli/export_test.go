package cli

import (
	"io"
	"time"
)

// NewBatchWriterForTest exposes the relay agent's log batching to tests.
func NewBatchWriterForTest(w io.Writer, delay time.Duration) interface {
	io.Writer
	Flush() error
} {
	return newBatchWriter(w, delay)
}
