//go:build linux

package filestore

import (
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// fdatasync flushes f's data (and only the metadata needed to read it).
func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// preallocate reserves size bytes for f, so that writes into it never run
// out of space, and writes zeros over them: overwriting written blocks
// makes a later fdatasync flush data only, where blocks merely reserved
// would need their extents converted (a journal commit) on first write.
func preallocate(f *os.File, size int64) error {
	if err := fallocate(f, size); err != nil {
		return err
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		n := min(int64(len(zeros)), size-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
	}
	return nil
}

func fallocate(f *os.File, size int64) error {
	for {
		err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
		switch err {
		case nil:
			return nil
		case syscall.EINTR:
			continue
		case syscall.EOPNOTSUPP:
			return f.Truncate(size)
		}
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
}

// directAlign is the alignment of the memory a direct write is made from.
const directAlign = 4096

// openDirect opens path a second time for direct writes (O_DIRECT) of log
// records, when its file system takes them at the log's alignment: the
// caller then writes each record with writeDSync, one system call that
// returns once the record is on disk, in place of a write into the page
// cache and an fdatasync; the kernel skips the page cache and its
// write-back, which costs the CPU about a third less per commit. It
// returns nil when the file system cannot (no O_DIRECT, as on older
// tmpfs, or a larger sector size than walAlign).
func openDirect(path string) *os.File {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_DIOALIGN, &st); err != nil ||
		st.Mask&unix.STATX_DIOALIGN == 0 || st.Dio_offset_align == 0 ||
		st.Dio_offset_align > walAlign || st.Dio_mem_align > directAlign || walAlign%st.Dio_offset_align != 0 {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

// writeDSync writes b at off with O_DSYNC semantics: when it returns nil,
// b is on disk as an fdatasync would leave it. errDirectUnsupported means
// the kernel or file system refused the direct write itself (nothing was
// written); the caller falls back to a buffered write and an fdatasync.
//
// Dead end (issue 20, commit "filestore: the log's durable writes and
// syncs through io_uring"): the same write as an io_uring IORING_OP_WRITE
// with RWF_DSYNC, awaited on the poller through a registered eventfd so
// that no P is held during the sync, measured node CPU per request 1.01x
// (pair median of 33 interleaved pairs, load 3-10, lower in 15) and
// requests/s 1.03x (higher in 17), within the noise. The kernel issues
// the write inline either way and completes the flush in a kworker, and
// the P a blocked pwritev2 holds is taken back within a sysmon tick
// (20-40 µs of a 1.2-1.5 ms sync), so there was little to gain.
//
// Dead end (issue 20): the same pwritev2 as a raw system call, so that the
// P stays with its thread through the sync (no retake by sysmon, no P
// handed to another thread, no wait in the global run queue once it
// returns), left node CPU per request unchanged (0.99x of the ratio to
// baseline-hello, 6 interleaved pairs of tunnel/wrk, load 7-11) and took
// file-engine requests/s from 0.33x to 0.26x baseline-hello (lower in 5
// of 6): with one of two Ps held through every sync, the other cannot
// keep up, and a stalled disk would hold it for as long as it stalls.
func writeDSync(f *os.File, b []byte, off int64) error {
	iov := [][]byte{b}
	for {
		n, err := unix.Pwritev2(int(f.Fd()), iov, off, unix.RWF_DSYNC)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EINVAL || err == unix.EOPNOTSUPP || err == unix.ENOSYS:
			return errDirectUnsupported
		case err != nil:
			return &os.PathError{Op: "pwritev2", Path: f.Name(), Err: err}
		case n < len(b):
			// The record is incomplete, and its batch fails.
			return &os.PathError{Op: "pwritev2", Path: f.Name(), Err: io.ErrShortWrite}
		}
		return nil
	}
}
