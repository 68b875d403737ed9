//go:build linux

package filestore

import (
	"os"
	"syscall"
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
