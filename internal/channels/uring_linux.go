//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x)

package channels

import (
	"sync/atomic"
	"syscall"
	"unsafe"
)

// sendRing writes the first frames of a batch of sessions in one system
// call: an io_uring whose sends are made non-blocking (MSG_DONTWAIT), so
// that the kernel issues every one of them inline while it takes the
// submission and each either writes what the socket takes or fails with
// EAGAIN, as write(2) on a non-blocking socket would. A fan-out to many
// subscribers otherwise makes one write(2) per subscriber, and on the
// virtual machines postern was measured on the entry and exit of a system
// call alone cost 1.75 µs, a quarter of a write. Where io_uring is not
// there (an older kernel, a container that forbids it) the pool writes
// with write(2).
//
// The descriptors must stay open from the time their numbers go into the
// ring until the kernel has taken the submission (it then holds the
// sockets itself): the pool holds each session's descriptor through
// RawConn.Control meanwhile (fastWriter.holdFrom), so that no number is
// closed and given to another connection in between.
type sendRing struct {
	fd      int
	sqRing  []byte // the submission ring and, on kernels that map both at once, the completion ring
	cqRing  []byte // the completion ring when mapped apart; nil otherwise
	sqeMem  []byte
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqArray unsafe.Pointer // uint32 per entry
	sqes    unsafe.Pointer // ioSqe per entry
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    unsafe.Pointer // ioCqe per entry
	entries uint32
}

// io_uring's ABI (include/uapi/linux/io_uring.h).
const (
	sysIOUringSetup = 425
	sysIOUringEnter = 426

	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	ioringSetupSubmitAll = 1 << 7 // 5.18: a request that fails does not stop the others
	ioringFeatSingleMmap = 1 << 0
	ioringEnterGetevents = 1 << 0
	ioringOpSend         = 26
)

type ioSqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type ioCqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type ioUringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  ioSqringOffsets
	cqOff                                                                  ioCqringOffsets
}

type ioSqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	msgFlags    uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad         uint64
}

type ioCqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// The sizes the kernel has; a mistake here fails the build.
var (
	_ [64 - unsafe.Sizeof(ioSqe{})]struct{}
	_ [unsafe.Sizeof(ioSqe{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(ioCqe{})]struct{}
	_ [120 - unsafe.Sizeof(ioUringParams{})]struct{}
	_ [unsafe.Sizeof(ioUringParams{}) - 120]struct{}
)

// newSendRing returns a ring of entries sends, or nil where io_uring
// cannot be used (the pool then writes with write(2)).
func newSendRing(entries int) *sendRing {
	if !useRings {
		return nil
	}
	var p ioUringParams
	p.flags = ioringSetupSubmitAll
	fd, _, errno := syscall.Syscall(sysIOUringSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil
	}
	r := &sendRing{fd: int(fd), entries: p.sqEntries}
	syscall.CloseOnExec(r.fd)
	if err := r.mmap(&p); err != nil {
		r.close()
		return nil
	}
	ringsMade.Add(1)
	return r
}

func (r *sendRing) mmap(p *ioUringParams) error {
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(ioCqe{})))
	single := p.features&ioringFeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	prot, flags := syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE
	if r.sqRing, err = syscall.Mmap(r.fd, ioringOffSQRing, sqSize, prot, flags); err != nil {
		return err
	}
	cq := r.sqRing
	if !single {
		if r.cqRing, err = syscall.Mmap(r.fd, ioringOffCQRing, cqSize, prot, flags); err != nil {
			return err
		}
		cq = r.cqRing
	}
	if r.sqeMem, err = syscall.Mmap(r.fd, ioringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(ioSqe{})), prot, flags); err != nil {
		return err
	}
	sq := unsafe.Pointer(&r.sqRing[0])
	r.sqHead = (*uint32)(unsafe.Add(sq, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(sq, p.sqOff.tail))
	r.sqMask = *(*uint32)(unsafe.Add(sq, p.sqOff.ringMask))
	r.sqArray = unsafe.Add(sq, p.sqOff.array)
	r.sqes = unsafe.Pointer(&r.sqeMem[0])
	c := unsafe.Pointer(&cq[0])
	r.cqHead = (*uint32)(unsafe.Add(c, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(c, p.cqOff.tail))
	r.cqMask = *(*uint32)(unsafe.Add(c, p.cqOff.ringMask))
	r.cqes = unsafe.Add(c, p.cqOff.cqes)
	return nil
}

// close releases the ring. Requests not yet submitted are dropped with it.
func (r *sendRing) close() {
	for _, m := range [][]byte{r.sqeMem, r.cqRing, r.sqRing} {
		if m != nil {
			syscall.Munmap(m)
		}
	}
	r.sqeMem, r.cqRing, r.sqRing = nil, nil, nil
	if r.fd >= 0 {
		syscall.Close(r.fd)
		r.fd = -1
	}
}

// send writes each held entry of ps (fd >= 0, at most r.entries of them)
// and records its outcome: n and err as fastWriter.try reports them, and
// done. false: the ring failed and must be closed; the entries not done
// were not sent (not even in part) and are the caller's to write.
func (r *sendRing) send(ps []pendingWrite) bool {
	tail := atomic.LoadUint32(r.sqTail)
	queued := uint32(0)
	for i := range ps {
		p := &ps[i]
		if p.fd < 0 {
			continue
		}
		idx := (tail + queued) & r.sqMask
		sqe := (*ioSqe)(unsafe.Add(r.sqes, uintptr(idx)*unsafe.Sizeof(ioSqe{})))
		*sqe = ioSqe{
			opcode:   ioringOpSend,
			fd:       int32(p.fd),
			addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(p.frame)))),
			len:      uint32(len(p.frame)),
			msgFlags: syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL,
			userData: uint64(i),
		}
		*(*uint32)(unsafe.Add(r.sqArray, uintptr(idx)*4)) = idx
		queued++
	}
	if queued == 0 {
		return true
	}
	atomic.StoreUint32(r.sqTail, tail+queued)
	// The sends never wait, so the call returns once the kernel made
	// them: raw, as the pool's write(2)s are (see writeNow).
	n, _, errno := syscall.RawSyscall6(sysIOUringEnter, uintptr(r.fd), uintptr(queued), 0, 0, 0, 0)
	submitted := uint32(n)
	if errno != 0 {
		submitted = 0
	}
	ok := submitted == queued
	got := r.reap(ps)
	for got < submitted {
		// Not completed inline (not expected of a send that may not
		// wait): wait for the rest.
		_, _, errno := syscall.Syscall6(sysIOUringEnter, uintptr(r.fd), 0, uintptr(submitted-got), ioringEnterGetevents, 0, 0)
		if errno != 0 && errno != syscall.EINTR {
			// Their outcome is unknown: count them as failed writes,
			// which close those connections.
			k := uint32(0) // the kernel takes the entries in order
			for i := range ps {
				if p := &ps[i]; p.fd >= 0 {
					if !p.done && k < submitted {
						p.done, p.err = true, errno
					}
					k++
				}
			}
			return false
		}
		got += r.reap(ps)
	}
	return ok
}

// reap records the completions in the ring and reports how many.
func (r *sendRing) reap(ps []pendingWrite) uint32 {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for h := head; h != tail; h++ {
		cqe := (*ioCqe)(unsafe.Add(r.cqes, uintptr(h&r.cqMask)*unsafe.Sizeof(ioCqe{})))
		if i := int(cqe.userData); i < len(ps) {
			p := &ps[i]
			p.done = true
			switch {
			case cqe.res >= 0:
				p.n = int(cqe.res)
			case syscall.Errno(-cqe.res) == syscall.EAGAIN:
				p.n = 0
			default:
				p.err = syscall.Errno(-cqe.res)
			}
		}
	}
	atomic.StoreUint32(r.cqHead, tail)
	return tail - head
}
