//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le)

package main

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"github.com/postern/postern/internal/channels/iouring"
)

// kernelFloor measures what one fan-out delivery costs the kernel alone
// on this machine: pairs loopback TCP connections and no server or client
// logic. For each of messages rounds one thread sends a frame the size of
// the fan-out's to every server end (io_uring, floorBatch non-blocking
// sends per submission, as postern's writer pool does) and then receives
// it on every client end (io_uring, floorBatch non-blocking receives per
// submission: the data is there, so nothing waits and nothing is woken).
// The client ends have SO_TIMESTAMPNS, as the fan-out's clients do. It
// returns the CPU time (user and system) per delivery, which holds the
// send, the receive processing that loopback runs inside it, the receive
// and the ACK that follows: what postern and its clients cannot go below
// together, on the same kernel, with one send and one receive per
// delivery.
func kernelFloor(pairs, messages int) (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ln, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer syscall.Close(ln)
	if err := syscall.Bind(ln, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return 0, err
	}
	if err := syscall.Listen(ln, 1024); err != nil {
		return 0, err
	}
	addr, err := syscall.Getsockname(ln)
	if err != nil {
		return 0, err
	}
	srv := make([]int, 0, pairs)
	cli := make([]int, 0, pairs)
	defer func() {
		for _, fd := range append(srv, cli...) {
			syscall.Close(fd)
		}
	}()
	for range pairs {
		c, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return 0, err
		}
		cli = append(cli, c)
		if err := syscall.Connect(c, addr); err != nil {
			return 0, err
		}
		s, _, err := syscall.Accept4(ln, syscall.SOCK_CLOEXEC)
		if err != nil {
			return 0, err
		}
		srv = append(srv, s)
		for _, fd := range []int{s, c} {
			if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1); err != nil {
				return 0, err
			}
		}
		if err := syscall.SetsockoptInt(c, syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1); err != nil {
			return 0, err
		}
	}
	ring, err := iouring.Setup(floorBatch, &iouring.Params{Flags: iouring.SetupSubmitAll})
	if err != nil {
		return 0, err
	}
	defer ring.Close()
	// A frame as the fan-out's: a text frame of a 19-digit stamp.
	frame := appendWSFrame([]byte("1796636020933998560"))
	bufs := make([]byte, floorBatch*floorBufSize)
	pass := func(fds []int, op uint8) error {
		for i := 0; i < len(fds); i += floorBatch {
			k := min(floorBatch, len(fds)-i)
			for j := range k {
				e := iouring.SQE{Opcode: op, FD: int32(fds[i+j]), MsgFlags: syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL}
				if op == iouring.OpSend {
					e.Addr, e.Len = uint64(uintptr(unsafe.Pointer(&frame[0]))), uint32(len(frame))
				} else {
					e.Addr, e.Len = uint64(uintptr(unsafe.Pointer(&bufs[j*floorBufSize]))), floorBufSize
				}
				ring.Push(&e)
			}
			if n, errno := ring.EnterNow(uint32(k), uint32(k), iouring.EnterGetevents); errno != 0 || n != k {
				return fmt.Errorf("io_uring_enter: %d of %d, %v", n, k, errno)
			}
			head, tail := ring.Completions()
			for h := head; h != tail; h++ {
				if res := ring.CQE(h).Res; int(res) != len(frame) {
					ring.Consumed(tail)
					return fmt.Errorf("kernel floor: a transfer of %d bytes, want %d", res, len(frame))
				}
			}
			ring.Consumed(tail)
		}
		return nil
	}
	round := func() error {
		if err := pass(srv, iouring.OpSend); err != nil {
			return err
		}
		return pass(cli, iouring.OpRecv)
	}
	if err := round(); err != nil { // warm-up
		return 0, err
	}
	c0 := ownCPU()
	for range messages {
		if err := round(); err != nil {
			return 0, err
		}
	}
	d := ownCPU() - c0
	if d <= 0 {
		return 0, errors.New("kernel floor: no CPU time measured")
	}
	return d / time.Duration(messages*pairs), nil
}

const (
	// floorBatch is the transfers per submission.
	floorBatch = 64
	// floorBufSize is the room for one received frame.
	floorBufSize = 64
)

// appendWSFrame is an unmasked final text frame carrying p (p short).
func appendWSFrame(p []byte) []byte {
	return append([]byte{0x81, byte(len(p))}, p...)
}
