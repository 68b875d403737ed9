//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x)

// Package iouring is the part of Linux's io_uring that postern uses: the
// ABI's structures and constants, and a ring mapped into the process
// (its submission and completion queues). The channels writer pool sends
// through rings; the load harness's websocket clients receive through
// one. It exists on the 64-bit architectures whose system call numbers
// for io_uring are the common ones (425 to 427).
package iouring

import (
	"errors"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// System calls and flags (include/uapi/linux/io_uring.h).
const (
	SysSetup    = 425
	SysEnter    = 426
	SysRegister = 427

	SetupCQSize       = 1 << 3
	SetupSubmitAll    = 1 << 7 // 5.18: a request that fails does not stop the others
	SetupSingleIssuer = 1 << 12
	SetupDeferTaskrun = 1 << 13

	FeatSingleMmap = 1 << 0
	EnterGetevents = 1 << 0

	RegisterPbufRing = 22

	OpRecvmsg = 10
	OpSend    = 26
	OpRecv    = 27

	RecvMultishot   = 1 << 1 // in SQE.Ioprio of a receive
	SQEBufferSelect = 1 << 5

	CQEFBuffer     = 1 << 0
	CQEFMore       = 1 << 1
	CQEBufferShift = 16

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000
)

// SQE is a submission queue entry.
type SQE struct {
	Opcode      uint8
	Flags       uint8
	Ioprio      uint16
	FD          int32
	Off         uint64
	Addr        uint64
	Len         uint32
	MsgFlags    uint32
	UserData    uint64
	BufIndex    uint16 // the buffer group, with SQEBufferSelect
	Personality uint16
	SpliceFDIn  int32
	Addr3       uint64
	Pad         uint64
}

// CQE is a completion queue entry.
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

type sqOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

// Params is struct io_uring_params: Flags and CQEntries in, the rest out.
type Params struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFD uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  sqOffsets
	CQOff                                                                  cqOffsets
}

// BufReg is struct io_uring_buf_reg, for RegisterPbufRing.
type BufReg struct {
	RingAddr    uint64
	RingEntries uint32
	BGID        uint16
	Flags       uint16
	Resv        [3]uint64
}

// The sizes the kernel has; a mistake here fails the build.
var (
	_ [64 - unsafe.Sizeof(SQE{})]struct{}
	_ [unsafe.Sizeof(SQE{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(CQE{})]struct{}
	_ [120 - unsafe.Sizeof(Params{})]struct{}
	_ [unsafe.Sizeof(Params{}) - 120]struct{}
	_ [40 - unsafe.Sizeof(BufReg{})]struct{}
)

// Ring is an io_uring mapped into the process. Its methods are for one
// goroutine at a time.
type Ring struct {
	FD      int
	Entries uint32 // of the submission queue
	sqRing  []byte // the submission queue and, on kernels that map both at once, the completion queue
	cqRing  []byte // the completion queue when mapped apart; nil otherwise
	sqeMem  []byte
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqArray unsafe.Pointer // uint32 per entry
	sqes    unsafe.Pointer // SQE per entry
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    unsafe.Pointer // CQE per entry
}

// Setup makes a ring of entries submissions, with p's flags (and
// CQEntries, with SetupCQSize).
func Setup(entries int, p *Params) (*Ring, error) {
	fd, _, errno := syscall.Syscall(SysSetup, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return nil, errno
	}
	r := &Ring{FD: int(fd), Entries: p.SQEntries}
	syscall.CloseOnExec(r.FD)
	if err := r.mmap(p); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *Ring) mmap(p *Params) error {
	sqSize := int(p.SQOff.Array + p.SQEntries*4)
	cqSize := int(p.CQOff.CQEs + p.CQEntries*uint32(unsafe.Sizeof(CQE{})))
	single := p.Features&FeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	prot, flags := syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE
	if r.sqRing, err = syscall.Mmap(r.FD, offSQRing, sqSize, prot, flags); err != nil {
		return err
	}
	cq := r.sqRing
	if !single {
		if r.cqRing, err = syscall.Mmap(r.FD, offCQRing, cqSize, prot, flags); err != nil {
			return err
		}
		cq = r.cqRing
	}
	if r.sqeMem, err = syscall.Mmap(r.FD, offSQEs, int(p.SQEntries)*int(unsafe.Sizeof(SQE{})), prot, flags); err != nil {
		return err
	}
	if len(r.sqRing) == 0 || len(cq) == 0 || len(r.sqeMem) == 0 {
		return errors.New("io_uring: empty mapping")
	}
	sq := unsafe.Pointer(&r.sqRing[0])
	r.sqHead = (*uint32)(unsafe.Add(sq, p.SQOff.Head))
	r.sqTail = (*uint32)(unsafe.Add(sq, p.SQOff.Tail))
	r.sqMask = *(*uint32)(unsafe.Add(sq, p.SQOff.RingMask))
	r.sqArray = unsafe.Add(sq, p.SQOff.Array)
	r.sqes = unsafe.Pointer(&r.sqeMem[0])
	c := unsafe.Pointer(&cq[0])
	r.cqHead = (*uint32)(unsafe.Add(c, p.CQOff.Head))
	r.cqTail = (*uint32)(unsafe.Add(c, p.CQOff.Tail))
	r.cqMask = *(*uint32)(unsafe.Add(c, p.CQOff.RingMask))
	r.cqes = unsafe.Add(c, p.CQOff.CQEs)
	return nil
}

// Close releases the ring. Requests not yet submitted are dropped with
// it; the kernel cancels those in flight. It is idempotent.
func (r *Ring) Close() {
	for _, m := range [][]byte{r.sqeMem, r.cqRing, r.sqRing} {
		if m != nil {
			syscall.Munmap(m)
		}
	}
	r.sqeMem, r.cqRing, r.sqRing = nil, nil, nil
	if r.FD >= 0 {
		syscall.Close(r.FD)
		r.FD = -1
	}
}

// Queued is how many pushed submissions the kernel has not taken yet.
func (r *Ring) Queued() uint32 {
	return atomic.LoadUint32(r.sqTail) - atomic.LoadUint32(r.sqHead)
}

// Push queues e; false when the submission queue is full.
func (r *Ring) Push(e *SQE) bool {
	tail := atomic.LoadUint32(r.sqTail)
	if tail-atomic.LoadUint32(r.sqHead) >= r.Entries {
		return false
	}
	idx := tail & r.sqMask
	*(*SQE)(unsafe.Add(r.sqes, uintptr(idx)*unsafe.Sizeof(SQE{}))) = *e
	*(*uint32)(unsafe.Add(r.sqArray, uintptr(idx)*4)) = idx
	atomic.StoreUint32(r.sqTail, tail+1)
	return true
}

// EnterNow is io_uring_enter(2) for a call that does not wait (nothing to
// wait for, or the requests complete inline): made raw, so that the
// scheduler does not hand the thread's processor away meanwhile.
func (r *Ring) EnterNow(submit, minComplete, flags uint32) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall6(SysEnter, uintptr(r.FD), uintptr(submit), uintptr(minComplete), uintptr(flags), 0, 0)
	return int(n), errno
}

// Enter is io_uring_enter(2) for a call that may wait.
func (r *Ring) Enter(submit, minComplete, flags uint32) (int, syscall.Errno) {
	n, _, errno := syscall.Syscall6(SysEnter, uintptr(r.FD), uintptr(submit), uintptr(minComplete), uintptr(flags), 0, 0)
	return int(n), errno
}

// Completions returns the range of completions ready, [head, tail): read
// each with CQE, then hand the range back with Consumed.
func (r *Ring) Completions() (head, tail uint32) {
	return atomic.LoadUint32(r.cqHead), atomic.LoadUint32(r.cqTail)
}

// CQE is completion i of a range Completions returned.
func (r *Ring) CQE(i uint32) *CQE {
	return (*CQE)(unsafe.Add(r.cqes, uintptr(i&r.cqMask)*unsafe.Sizeof(CQE{})))
}

// Consumed frees the completions before tail for the kernel to reuse.
func (r *Ring) Consumed(tail uint32) { atomic.StoreUint32(r.cqHead, tail) }
