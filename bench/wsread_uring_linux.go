//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le)

package main

import (
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/postern/postern/internal/channels/iouring"
)

// ringLoop reads every subscriber connection through one io_uring: a
// multishot recvmsg(2) per connection, armed once, receives into buffers
// the ring provides, and the ring is set up so that the kernel runs those
// receives only when the loop asks for completions (DEFER_TASKRUN). The
// server's send so costs the clients no wake-up, and the loop reads
// thousands of connections per io_uring_enter(2) instead of making an
// epoll_wait(2) and a recvmsg(2) for each: on the virtual machines this
// was measured on, the entry and exit of a system call alone cost about
// as much as the receive. Each completion carries the kernel's
// SO_TIMESTAMPNS stamp, as recvmsg(2) did.
//
// The ring must be made, fed and reaped by one thread (SINGLE_ISSUER): all
// of it happens on the loop's goroutine, locked to its thread.
type ringLoop struct {
	r     *wsReaders
	conns []*pollConn // by index, which is each request's user data
	frame func(i int, payload []byte, at frameTimes)

	ring *iouring.Ring
	// bufRing is the provided-buffer ring (ringBufs entries of 16 bytes),
	// bufs the buffers it hands out; bufTail counts the buffers given to
	// the kernel so far.
	bufRing []byte
	bufs    []byte
	bufTail uint16
	// msg is the template of every recvmsg request: no name, room for the
	// timestamp's control message; the kernel reads it when it takes the
	// request.
	msg syscall.Msghdr
}

// The loop's ring.
const (
	// ringSQ and ringCQ are the ring's sizes: the submission ring only
	// arms the receives (and re-arms one that ended); the completion ring
	// holds what one loop pass reaps.
	ringSQ = 1024
	ringCQ = 16384
	// ringBufs buffers of ringBufSize bytes: a completion takes one until
	// the loop has parsed it, and the loop hands each back at once. A
	// buffer holds the header, the control message and the payload. A
	// pass runs a few dozen receives (see ringFull), so few buffers are
	// out at a time; 256 of them (128 KiB) stay in the cache, where 8192
	// (4 MiB, taken in turn) had every receive's copy miss it: client CPU
	// per delivery 2.63 -> 2.47 µs (medians of 5 interleaved rounds).
	// Should they run out, the receives that found none end with ENOBUFS
	// and are armed again (complete).
	ringBufs    = 256
	ringBufSize = 512
	ringCtlLen  = 64
	ringGroup   = 1
	// ringOutLen is the size of struct io_uring_recvmsg_out.
	ringOutLen = 16
)

// startRing reads conns through one ring. It returns once the ring is
// set up and every receive armed, or with the error that stopped it (the
// caller then reads with epoll; conns stay open either way).
func startRing(r *wsReaders, conns []*pollConn, frame func(i int, payload []byte, at frameTimes)) (*ringLoop, error) {
	l := &ringLoop{r: r, conns: conns, frame: frame}
	l.msg.Controllen = ringCtlLen
	ready := make(chan error, 1)
	r.wg.Go(func() {
		// The thread is the loop's alone and ends with it (no unlock):
		// the ring belongs to it, and so does its priority.
		runtime.LockOSThread()
		setClientNice()
		if err := l.setup(); err != nil {
			l.conns = nil // the caller's still
			l.close()
			ready <- err
			return
		}
		ready <- nil
		l.run()
	})
	if err := <-ready; err != nil {
		return nil, err
	}
	return l, nil
}

func (l *ringLoop) setup() error {
	var err error
	p := iouring.Params{Flags: iouring.SetupCQSize | iouring.SetupSingleIssuer | iouring.SetupDeferTaskrun, CQEntries: ringCQ}
	if l.ring, err = iouring.Setup(ringSQ, &p); err != nil {
		return err
	}
	prot := syscall.PROT_READ | syscall.PROT_WRITE

	// The provided buffers: the ring of their addresses must be page
	// aligned, hence mmap for both.
	anon := syscall.MAP_PRIVATE | syscall.MAP_ANON
	if l.bufRing, err = syscall.Mmap(-1, 0, ringBufs*16, prot, anon); err != nil {
		return err
	}
	if l.bufs, err = syscall.Mmap(-1, 0, ringBufs*ringBufSize, prot, anon); err != nil {
		return err
	}
	reg := iouring.BufReg{RingAddr: uint64(uintptr(unsafe.Pointer(&l.bufRing[0]))), RingEntries: ringBufs, BGID: ringGroup}
	if _, _, errno := syscall.Syscall6(iouring.SysRegister, uintptr(l.ring.FD), iouring.RegisterPbufRing, uintptr(unsafe.Pointer(&reg)), 1, 0, 0); errno != 0 {
		return errno
	}
	for id := range ringBufs {
		l.giveBuf(uint16(id))
	}
	l.publishBufs()

	now := time.Now()
	for i, pc := range l.conns {
		if pc != nil {
			if p := pc.pending; len(p) > 0 {
				// Bytes that came with the handshake response.
				pc.pending = nil
				l.parse(pc, p, frameTimes{now, now})
			}
			if err := l.arm(i); err != nil {
				return err
			}
		}
	}
	return l.submit()
}

// giveBuf puts buffer id at the end of the provided-buffer ring; the
// kernel sees it once publishBufs stores the tail.
func (l *ringLoop) giveBuf(id uint16) {
	e := unsafe.Pointer(&l.bufRing[int(l.bufTail&(ringBufs-1))*16])
	*(*uint64)(e) = uint64(uintptr(unsafe.Pointer(&l.bufs[int(id)*ringBufSize])))
	*(*uint32)(unsafe.Add(e, 8)) = ringBufSize
	*(*uint16)(unsafe.Add(e, 12)) = id
	l.bufTail++
}

// publishBufs stores the buffer ring's tail (a 16-bit field at byte 14,
// over the first entry's reserved bytes) with release semantics: as one
// 32-bit store together with the first entry's id beside it, unchanged.
func (l *ringLoop) publishBufs() {
	w := (*uint32)(unsafe.Pointer(&l.bufRing[12]))
	id0 := uint32(*(*uint16)(unsafe.Pointer(&l.bufRing[12])))
	atomic.StoreUint32(w, uint32(l.bufTail)<<16|id0)
}

// arm queues connection i's multishot receive, submitting first when the
// submission ring is full.
func (l *ringLoop) arm(i int) error {
	e := iouring.SQE{
		Opcode:   iouring.OpRecvmsg,
		Flags:    iouring.SQEBufferSelect,
		Ioprio:   iouring.RecvMultishot,
		FD:       int32(l.conns[i].fd),
		Addr:     uint64(uintptr(unsafe.Pointer(&l.msg))),
		UserData: uint64(i),
		BufIndex: ringGroup,
	}
	for !l.ring.Push(&e) {
		if err := l.submit(); err != nil {
			return err
		}
	}
	return nil
}

// submit hands the kernel the queued requests.
func (l *ringLoop) submit() error {
	for n := l.ring.Queued(); n > 0; n = l.ring.Queued() {
		if _, errno := l.ring.EnterNow(n, 0, 0); errno != 0 && errno != syscall.EINTR && errno != syscall.EAGAIN && errno != syscall.EBUSY {
			return errno
		}
	}
	return nil
}

// ringFull is how many completions one pass reaps that make the loop go
// on at once rather than sleep: the kernel runs a bounded number of
// deferred receives per io_uring_enter (20 since Linux 6.13).
const ringFull = 16

func (l *ringLoop) run() {
	defer l.close()
	for !l.r.stopped.Load() {
		// No submission, and no wait: the call runs the receives whose
		// data came since the last pass.
		_, errno := l.ring.EnterNow(0, 0, iouring.EnterGetevents)
		if errno != 0 && errno != syscall.EINTR && errno != syscall.EAGAIN && errno != syscall.EBUSY && errno != syscall.ETIME {
			return
		}
		n := l.reap()
		if err := l.submit(); err != nil {
			return
		}
		if n < ringFull {
			time.Sleep(pollInterval)
		}
	}
}

// reap handles the completions in the ring and reports how many.
func (l *ringLoop) reap() int {
	head, tail := l.ring.Completions()
	if head == tail {
		return 0
	}
	now := time.Now()
	for h := head; h != tail; h++ {
		cqe := l.ring.CQE(h)
		l.complete(int(cqe.UserData), cqe.Res, cqe.Flags, now)
	}
	l.ring.Consumed(tail)
	l.publishBufs()
	return int(tail - head)
}

// complete acts on one completion of connection i's receive.
func (l *ringLoop) complete(i int, res int32, flags uint32, now time.Time) {
	pc := l.conns[i]
	data := false // the completion brought bytes of a connection that goes on
	if flags&iouring.CQEFBuffer != 0 {
		id := uint16(flags >> iouring.CQEBufferShift)
		if res >= 0 && pc != nil && !pc.shut {
			data = l.received(pc, l.bufs[int(id)*ringBufSize:(int(id)+1)*ringBufSize], now)
		}
		l.giveBuf(id)
	}
	if flags&iouring.CQEFMore != 0 || pc == nil {
		return
	}
	// The receive ended: the end of the connection or an error, or, while
	// the connection goes on, no buffer was left or the completion ring
	// was full; then it is armed again.
	if !pc.shut && (data || res == -int32(syscall.ENOBUFS)) {
		l.arm(i)
		return
	}
	syscall.Close(pc.fd)
	l.conns[i] = nil
}

// received parses what one completion's buffer holds: struct
// io_uring_recvmsg_out, the control messages, the payload. false: there
// was no payload (the end of the stream), or it held a close frame.
func (l *ringLoop) received(pc *pollConn, buf []byte, now time.Time) bool {
	ctl := min(int(*(*uint32)(unsafe.Pointer(&buf[4]))), ringCtlLen)
	n := min(int(*(*uint32)(unsafe.Pointer(&buf[8]))), ringBufSize-ringOutLen-ringCtlLen)
	if n == 0 {
		return false
	}
	arrived := rxStamp(buf[ringOutLen : ringOutLen+ctl])
	if arrived.IsZero() {
		arrived = now
	}
	p := buf[ringOutLen+ringCtlLen : ringOutLen+ringCtlLen+n]
	if pc.pending != nil {
		p = append(pc.pending, p...)
		pc.pending = nil
	}
	return l.parse(pc, p, frameTimes{arrived, now})
}

// parse is pollLoop.parse for the ring: a close frame shuts the
// connection down, and its descriptor is closed once its receive ends.
func (l *ringLoop) parse(pc *pollConn, p []byte, now frameTimes) bool {
	if !parseFrames(pc, p, now, l.frame) {
		syscall.Shutdown(pc.fd, syscall.SHUT_RDWR)
		pc.shut = true
		return false
	}
	return true
}

// close releases the ring (which ends its receives) and closes the
// connections.
func (l *ringLoop) close() {
	if l.ring != nil {
		l.ring.Close()
	}
	for _, m := range [][]byte{l.bufRing, l.bufs} {
		if m != nil {
			syscall.Munmap(m)
		}
	}
	l.bufRing, l.bufs = nil, nil
	for i, pc := range l.conns {
		if pc != nil {
			syscall.Close(pc.fd)
			l.conns[i] = nil
		}
	}
}
