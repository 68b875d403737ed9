//go:build !linux

package splice

import "syscall"

// supported: elsewhere bytes are copied through a buffer.
const supported = false

func unpace(syscall.RawConn) {}

func pump(dst, src syscall.RawConn, n int64) (int64, error) { panic("splice: not supported") }
