//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x)

package filestore

import (
	"io"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/postern/postern/internal/iouring"
	"golang.org/x/sys/unix"
)

// logRing makes the log's durable writes and syncs through io_uring: each
// is submitted at once and its completion awaited on Go's network poller
// (iouring.Async), so that the goroutine of the batch being synced parks
// and its processor runs other goroutines for the 1-2 ms the disk takes.
// Made as a system call (pwritev2 with RWF_DSYNC, fdatasync), the wait
// holds one of the processors until the scheduler's monitor takes it
// back, and the woken writer then waits for one. A nil *logRing, where
// io_uring cannot be used (a kernel without it or too old, a seccomp
// filter, kernel.io_uring_disabled), makes no call: the wal makes the
// system calls.
type logRing struct{ a *iouring.Async }

// openLogRing returns the log's ring, or nil where there is none.
func openLogRing() *logRing {
	if !useRing {
		return nil
	}
	// Room for every batch of the largest window syncing at once.
	a, err := iouring.NewAsync(2*MaxSyncWindow, iouring.OpWrite, iouring.OpFsync)
	if err != nil {
		return nil
	}
	return &logRing{a: a}
}

// writeDSync is writeDSync through the ring; took is false when the
// ring took nothing (the caller makes the system call).
func (r *logRing) writeDSync(f *os.File, b []byte, off int64) (took bool, err error) {
	if r == nil || len(b) == 0 {
		return false, nil
	}
	e := iouring.SQE{
		Opcode:   iouring.OpWrite,
		FD:       int32(f.Fd()),
		Off:      uint64(off),
		Addr:     uint64(uintptr(unsafe.Pointer(&b[0]))),
		Len:      uint32(len(b)),
		MsgFlags: unix.RWF_DSYNC,
	}
	res, ok := r.do(e)
	runtime.KeepAlive(b)
	runtime.KeepAlive(f)
	switch {
	case !ok:
		return false, nil
	case res < 0:
		switch errno := syscall.Errno(-res); errno {
		case unix.EINVAL, unix.EOPNOTSUPP, unix.ENOSYS:
			return true, errDirectUnsupported
		default:
			return true, &os.PathError{Op: "write (io_uring, RWF_DSYNC)", Path: f.Name(), Err: errno}
		}
	case int(res) < len(b):
		// The record is incomplete, and its batch fails.
		return true, &os.PathError{Op: "write (io_uring, RWF_DSYNC)", Path: f.Name(), Err: io.ErrShortWrite}
	}
	return true, nil
}

// fdatasync is fdatasync through the ring; took is false when the ring
// took nothing.
func (r *logRing) fdatasync(f *os.File) (took bool, err error) {
	if r == nil {
		return false, nil
	}
	res, ok := r.do(iouring.SQE{Opcode: iouring.OpFsync, FD: int32(f.Fd()), MsgFlags: iouring.FsyncDatasync})
	runtime.KeepAlive(f)
	switch {
	case !ok:
		return false, nil
	case res < 0:
		return true, &os.PathError{Op: "fdatasync (io_uring)", Path: f.Name(), Err: syscall.Errno(-res)}
	}
	return true, nil
}

// do submits e and returns its result, submitting it again when it was
// interrupted; ok is false when the ring took nothing.
func (r *logRing) do(e iouring.SQE) (res int32, ok bool) {
	for {
		res, err := r.a.Do(e)
		if err != nil {
			return 0, false
		}
		if res != -int32(syscall.EINTR) && res != -int32(syscall.EAGAIN) {
			return res, true
		}
	}
}

func (r *logRing) close() {
	if r != nil {
		r.a.Close()
	}
}
