//go:build unix

package filestore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// lockDir takes an exclusive lock on dir's LOCK file, writing this
// process's id into it, or says which process holds it. The lock goes with
// the process, so a server killed with -9 leaves nothing to clean up.
func lockDir(dir string, readOnly bool) (func(), error) {
	path := lockPath(dir)
	flag := os.O_RDWR | os.O_CREATE
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if readOnly && errors.Is(err, os.ErrNotExist) {
		return func() {}, nil // nobody ever wrote here
	}
	if err != nil {
		return nil, fmt.Errorf("file store: opening lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another process"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
					holder = "process " + strconv.Itoa(pid)
				}
			}
			return nil, fmt.Errorf("file store: data directory %s is in use by %s (it holds %s): is another postern serving it?", dir, holder, path)
		}
		return nil, fmt.Errorf("file store: locking %s: %w", path, err)
	}
	if readOnly {
		return func() { f.Close() }, nil
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
