//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x)

package iouring

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Requests, flags and registrations of Async's users.
const (
	OpFsync = 3
	OpWrite = 23

	FsyncDatasync = 1 << 0 // in SQE.MsgFlags (fsync_flags) of OpFsync

	RegisterEventfd = 4
	RegisterProbe   = 8

	probeOpSupported = 1 << 0
)

// ErrUnavailable is Async's answer when the ring cannot take a request
// (it failed once, or was closed): nothing was submitted, and the caller
// makes the system call itself.
var ErrUnavailable = errors.New("io_uring: ring unavailable")

// Async is a ring for requests that take long, such as a durable write:
// a goroutine submits its request at once and then waits for the
// completion on Go's network poller, through an eventfd the ring signals
// (IORING_REGISTER_EVENTFD). No thread and no processor (P) is held while
// the kernel works, where a blocking system call holds its P until the
// scheduler's monitor takes it back. It is safe for concurrent use: one
// waiting goroutine at a time reads the eventfd and hands the others
// their completions, and the reading passes to another when its own
// request is done. It starts no goroutine.
type Async struct {
	mu      sync.Mutex
	r       *Ring
	ev      *os.File // the eventfd, non-blocking, on the poller
	next    uint64
	waiting map[uint64]*asyncWait
	reaping bool // a waiter is reading the eventfd
	evBuf   [8]byte
	broken  bool // a submission failed: take no more requests
}

type asyncWait struct {
	res  int32
	done bool
	// wake is signalled when done is set, or when the waiter is to read
	// the eventfd in turn.
	wake chan struct{}
}

// NewAsync sets up a ring for up to entries requests at once, when the
// kernel has every opcode of ops; otherwise (no io_uring, forbidden by a
// seccomp filter or by kernel.io_uring_disabled, a kernel too old) it
// fails, and the caller keeps to system calls.
func NewAsync(entries int, ops ...uint8) (*Async, error) {
	r, err := Setup(entries, &Params{})
	if err != nil {
		return nil, err
	}
	a := &Async{r: r, waiting: make(map[uint64]*asyncWait)}
	if err := a.init(ops); err != nil {
		r.Close()
		if a.ev != nil {
			a.ev.Close()
		}
		return nil, err
	}
	return a, nil
}

func (a *Async) init(ops []uint8) error {
	// struct io_uring_probe and its 256 struct io_uring_probe_op.
	var probe struct {
		LastOp, OpsLen uint8
		Resv           uint16
		Resv2          [3]uint32
		Ops            [256]struct {
			Op, Resv uint8
			Flags    uint16
			Resv2    uint32
		}
	}
	if _, _, errno := syscall.Syscall6(SysRegister, uintptr(a.r.FD), RegisterProbe, uintptr(unsafe.Pointer(&probe)), 256, 0, 0); errno != 0 {
		return errno
	}
	for _, op := range ops {
		if op > probe.LastOp || probe.Ops[op].Flags&probeOpSupported == 0 {
			return syscall.ENOSYS
		}
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return err
	}
	// Non-blocking: os.NewFile puts it on the poller.
	a.ev = os.NewFile(uintptr(efd), "io_uring eventfd")
	fd := int32(efd)
	if _, _, errno := syscall.Syscall6(SysRegister, uintptr(a.r.FD), RegisterEventfd, uintptr(unsafe.Pointer(&fd)), 1, 0, 0); errno != 0 {
		return errno
	}
	return nil
}

// Do submits e (its UserData is Do's) and returns the result of its
// completion (a count, or a negated errno), once it is complete. Memory e
// points to must stay alive until Do returns. ErrUnavailable means that
// nothing was submitted; so does any other error.
func (a *Async) Do(e SQE) (int32, error) {
	// Not pooled: a channel belongs to the synctest bubble it was made in.
	w := &asyncWait{wake: make(chan struct{}, 1)}
	a.mu.Lock()
	if a.broken || a.r == nil {
		a.mu.Unlock()
		return 0, ErrUnavailable
	}
	a.next++
	e.UserData = a.next
	if !a.r.Push(&e) {
		a.mu.Unlock()
		return 0, ErrUnavailable
	}
	for {
		// Raw: taking an I/O request issues it or hands it to the
		// kernel's workers, without sleeping.
		n, errno := a.r.EnterNow(1, 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 || n != 1 {
			// The request may still be queued: no call may enter the
			// ring again.
			a.broken = true
			a.mu.Unlock()
			return 0, ErrUnavailable
		}
		break
	}
	a.waiting[e.UserData] = w
	for !w.done {
		if a.reaping {
			a.mu.Unlock()
			<-w.wake
			a.mu.Lock()
			continue
		}
		a.reap(w)
	}
	if !a.reaping {
		// Pass the reading on to one of the goroutines still waiting.
		for _, o := range a.waiting {
			signal(o)
			break
		}
	}
	a.mu.Unlock()
	return w.res, nil
}

// reap reads the eventfd and hands out completions until w's is there;
// a.mu is held, and released while it waits.
func (a *Async) reap(w *asyncWait) {
	a.reaping = true
	for {
		a.drain(w)
		if w.done {
			break
		}
		if a.r.Overflowed() {
			// Completions the queue had no room for, signalled already.
			a.r.EnterNow(0, 0, EnterGetevents)
			continue
		}
		a.mu.Unlock()
		_, err := a.ev.Read(a.evBuf[:])
		if err != nil {
			// Not expected of an eventfd; wait in the kernel instead.
			a.r.Enter(0, 1, EnterGetevents)
		}
		a.mu.Lock()
	}
	a.reaping = false
}

// drain hands out the completions ready; a.mu is held.
func (a *Async) drain(self *asyncWait) {
	head, tail := a.r.Completions()
	for i := head; i != tail; i++ {
		c := a.r.CQE(i)
		if o, ok := a.waiting[c.UserData]; ok {
			delete(a.waiting, c.UserData)
			o.res, o.done = c.Res, true
			if o != self {
				signal(o)
			}
		}
	}
	a.r.Consumed(tail)
}

func signal(w *asyncWait) {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close releases the ring and its eventfd. No request may be in flight;
// later calls of Do answer ErrUnavailable. It is idempotent.
func (a *Async) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.r == nil {
		return nil
	}
	a.r.Close()
	a.r = nil
	return a.ev.Close()
}
