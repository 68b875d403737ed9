//go:build !linux

package filestore

import "os"

func fdatasync(f *os.File) error { return f.Sync() }

func preallocate(f *os.File, size int64) error { return f.Truncate(size) }

// directAlign is the alignment of the memory a direct write is made from.
const directAlign = 4096

// openDirect returns nil: direct writes are used on Linux only.
func openDirect(string) *os.File { return nil }

// writeDSync is never called where openDirect returns nil.
func writeDSync(*os.File, []byte, int64) error { return errDirectUnsupported }
