package channels

import (
	"syscall"
	"unsafe"
)

// writeNow is write(2) on a non-blocking socket. It cannot block, so it
// is made as a raw system call: the scheduler does not treat the worker
// as gone into a system call, which would have its monitor thread hand
// the worker's processor to another thread when a write outlasts a tick
// (a thread switch for some writes, on a path that makes one write per
// subscriber). A write takes microseconds.
func writeNow(fd int, p []byte) (int, error) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// writevNow is writev(2) on a non-blocking socket, raw as writeNow.
func writevNow(fd int, iov []syscall.Iovec) (int, error) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(iov))), uintptr(len(iov)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
