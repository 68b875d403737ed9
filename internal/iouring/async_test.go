//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x)

package iouring_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/iouring"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newAsync sets up a ring with writes and syncs, or skips where the
// kernel forbids io_uring.
func newAsync(t *testing.T) *iouring.Async {
	t.Helper()
	a, err := iouring.NewAsync(8, iouring.OpWrite, iouring.OpFsync)
	if err != nil {
		t.Skipf("io_uring cannot be used here: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func write(a *iouring.Async, f *os.File, b []byte, off int64) (int32, error) {
	return a.Do(iouring.SQE{Opcode: iouring.OpWrite, FD: int32(f.Fd()), Off: uint64(off), Addr: uint64(uintptr(unsafe.Pointer(&b[0]))), Len: uint32(len(b))})
}

// TestAsyncConcurrentWrites writes a file from many goroutines at once,
// each its own part, with a sync after each write, and finds every part
// written and every result the count it wrote: each waiter is handed its
// own completion, whoever reads the eventfd.
func TestAsyncConcurrentWrites(t *testing.T) {
	a := newAsync(t)
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const writers, rounds, part = 24, 20, 64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for r := range rounds {
				b := bytes.Repeat([]byte{byte('a' + w%26)}, part)
				off := int64((r*writers + w) * part)
				n, err := write(a, f, b, off)
				if err == nil && n != part {
					err = fmt.Errorf("write at %d: result %d, want %d", off, n, part)
				}
				if err == nil {
					if n, err = a.Do(iouring.SQE{Opcode: iouring.OpFsync, FD: int32(f.Fd()), MsgFlags: iouring.FsyncDatasync}); err == nil && n != 0 {
						err = fmt.Errorf("fsync: result %d", n)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != writers*rounds*part {
		t.Fatalf("file has %d bytes, want %d", len(got), writers*rounds*part)
	}
	for i := 0; i < len(got); i += part {
		want := byte('a' + (i/part%writers)%26)
		if !bytes.Equal(got[i:i+part], bytes.Repeat([]byte{want}, part)) {
			t.Fatalf("part at %d: %q, want all %q", i, got[i:i+part], want)
		}
	}
}

// TestAsyncErrorsAndClose: a request the kernel refuses completes with
// its negated errno, and a closed ring takes nothing.
func TestAsyncErrorsAndClose(t *testing.T) {
	a := newAsync(t)
	f, err := os.Open("async_test.go") // read-only
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := write(a, f, []byte("x"), 0); err != nil || n != -int32(syscall.EBADF) {
		t.Fatalf("write to a read-only file: %d %v, want -EBADF", n, err)
	}
	a.Close()
	a.Close()
	if _, err := write(a, f, []byte("x"), 0); !errors.Is(err, iouring.ErrUnavailable) {
		t.Fatalf("after Close: %v, want ErrUnavailable", err)
	}
}

// TestAsyncUnknownOpcode: a ring is refused when the kernel lacks an
// opcode it is asked for.
func TestAsyncUnknownOpcode(t *testing.T) {
	newAsync(t)
	if a, err := iouring.NewAsync(8, 250); err == nil {
		a.Close()
		t.Fatal("NewAsync with opcode 250: no error")
	}
}
