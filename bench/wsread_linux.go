package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// On Linux the subscribers' connections are read through one io_uring
// (ringLoop, wsread_uring_linux.go) where the kernel allows it, and
// otherwise (or with POSTERN_BENCH_CLIENT_READER=epoll) by a few epoll
// loops, on raw descriptors either way, instead of a goroutine per
// connection. An epoll loop makes one read(2) per
// readable socket, no goroutine wake-up, park and second read that ends in
// EAGAIN per frame, and no allocation per frame. The clients share the
// machine's two cores with the server, so what they cost is taken from
// the server; both servers get exactly the same clients.
//
// A loop polls its epoll descriptor every pollInterval rather than
// sleeping in epoll_wait: a client asleep in epoll_wait is woken (a
// context switch, and in a virtual machine an inter-processor interrupt)
// by nearly every frame the server writes, and on loopback the server's
// write(2) pays for that wake-up. Subscribers on other machines cost the
// server nothing of the kind.
//
// Two times are taken per frame: when the kernel queued it on the
// subscriber's socket (SO_TIMESTAMPNS; on loopback the stamp is taken
// inside the server's send) and when the loop read it. The first is the
// server's delivery time; the second adds the clients' own scheduling
// and polling delay. The loops run at the default priority, on threads
// of their own. At a lower one (nice 10, as they once did) the server's
// two writer threads hold both cores for the whole fan-out and the
// clients read most frames only after it: the read time then measures
// how long the clients take to catch up, not the server. Once the
// clients had become cheap (less than half the server's CPU per
// delivery), equal priority spreads their cost over both figures: in 6
// interleaved rounds each on a busy machine, the read p99 came within 20
// ms of the delivery p99 (median gap; 100 ms at nice 10), the read p99
// fell by 31% and the delivery p99 rose by 22% (medians).

// pollInterval is how long a loop sleeps when it found less than a full
// batch of events.
const pollInterval = 500 * time.Microsecond

// readLoops is the number of epoll loops (POSTERN_BENCH_READERS).
func readLoops() int {
	if n, err := strconv.Atoi(os.Getenv("POSTERN_BENCH_READERS")); err == nil && n > 0 {
		return n
	}
	return 1
}

// wsReaders reads the frames of a set of subscriber connections.
type wsReaders struct {
	loops   []*pollLoop
	rings   []*ringLoop // when the connections are read through io_uring
	stopped atomic.Bool
	wg      sync.WaitGroup
}

type pollLoop struct {
	r     *wsReaders
	epfd  int
	byFD  []*pollConn // by descriptor
	buf   []byte
	frame func(i int, payload []byte, at frameTimes)
	// The recvmsg(2) arguments, kept here so that no read allocates.
	iov syscall.Iovec
	msg syscall.Msghdr
	oob []byte
}

// frameTimes is when a frame reached the subscriber.
type frameTimes struct {
	// arrived: the kernel queued it on the client's socket (the time
	// of read when the kernel gave no stamp).
	arrived time.Time
	// read: the client's loop read it.
	read time.Time
}

// setClientNice gives the calling thread the priority
// POSTERN_BENCH_CLIENT_NICE asks for, for experiments; unset, it keeps
// the process's.
func setClientNice() {
	if n, err := strconv.Atoi(os.Getenv("POSTERN_BENCH_CLIENT_NICE")); err == nil {
		syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), n)
	}
}

// pollConn is one connection as a loop holds it.
type pollConn struct {
	fd  int
	idx int
	// pending holds the start of a frame that a read cut (rare: frames
	// are small); nil otherwise.
	pending []byte
	// shut: the server closed the websocket and the connection was shut
	// down; the ring closes it once its receive ends.
	shut bool
}

// startReaders takes over conns (they must not be used afterwards) and
// calls frame for every data frame, from the loops' goroutines: frames of
// one connection come from one goroutine, in order. payload is valid only
// during the call. Pings are answered. stop closes everything.
func startReaders(conns []*wsClient, frame func(i int, payload []byte, at frameTimes)) (*wsReaders, error) {
	pcs := make([]*pollConn, len(conns))
	var firstErr error
	for i, c := range conns {
		pc, err := detach(c, i)
		if err != nil {
			firstErr = errors.Join(firstErr, err)
			continue
		}
		pcs[i] = pc
	}
	if firstErr != nil {
		closePollConns(pcs)
		return nil, firstErr
	}
	r := &wsReaders{}
	if os.Getenv(clientReaderEnv) != "epoll" {
		err := r.startRings(pcs, frame)
		if err == nil {
			return r, nil
		}
		if len(r.rings) > 0 {
			// A later ring failed (startRings closed the connections
			// no ring took): the running ones close theirs as they stop.
			r.stop()
			return nil, fmt.Errorf("io_uring reader: %w", err)
		}
		if os.Getenv(clientReaderEnv) == "uring" {
			closePollConns(pcs)
			return nil, fmt.Errorf("io_uring reader: %w", err)
		}
	}
	return startEpoll(r, pcs, frame)
}

// startRings reads pcs through ringLoops() rings, each connection
// through one, on threads of their own. It stops at the first ring that
// cannot be set up: when that is the first, pcs stay open; otherwise the
// connections of the rings not started are closed.
func (r *wsReaders) startRings(pcs []*pollConn, frame func(i int, payload []byte, at frameTimes)) error {
	n := ringLoops()
	parts := make([][]*pollConn, n)
	for i, pc := range pcs {
		parts[i%n] = append(parts[i%n], pc)
	}
	for k, part := range parts {
		l, err := startRing(r, part, frame)
		if err != nil {
			if k > 0 {
				for _, p := range parts[k:] {
					closePollConns(p)
				}
			}
			return err
		}
		r.rings = append(r.rings, l)
	}
	return nil
}

// ringLoops is the number of io_uring readers (POSTERN_BENCH_RINGS).
func ringLoops() int {
	if n, err := strconv.Atoi(os.Getenv("POSTERN_BENCH_RINGS")); err == nil && n > 0 {
		return n
	}
	return 1
}

// clientReaderEnv chooses the clients' reader: "epoll" or "uring"; unset:
// io_uring where the kernel allows it, else epoll.
const clientReaderEnv = "POSTERN_BENCH_CLIENT_READER"

func closePollConns(pcs []*pollConn) {
	for _, pc := range pcs {
		if pc != nil {
			syscall.Close(pc.fd)
		}
	}
}

// startEpoll reads pcs with readLoops() epoll loops.
func startEpoll(r *wsReaders, pcs []*pollConn, frame func(i int, payload []byte, at frameTimes)) (*wsReaders, error) {
	n := readLoops()
	for range n {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			r.closeLoops()
			closePollConns(pcs)
			return nil, err
		}
		l := &pollLoop{r: r, epfd: epfd, buf: make([]byte, 64<<10), frame: frame, oob: make([]byte, 128)}
		l.iov.Base = &l.buf[0]
		l.iov.SetLen(len(l.buf))
		l.msg.Iov = &l.iov
		l.msg.Iovlen = 1
		l.msg.Control = &l.oob[0]
		r.loops = append(r.loops, l)
	}
	var firstErr error
	for i, pc := range pcs {
		l := r.loops[i%n]
		if pc.fd >= len(l.byFD) {
			l.byFD = append(l.byFD, make([]*pollConn, pc.fd+1-len(l.byFD))...)
		}
		l.byFD[pc.fd] = pc
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: int32(pc.fd)}
		if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, pc.fd, &ev); err != nil {
			firstErr = errors.Join(firstErr, err)
		}
	}
	if firstErr != nil {
		r.closeLoops()
		return nil, firstErr
	}
	for _, l := range r.loops {
		// Bytes that came with the handshake response.
		for _, pc := range l.byFD {
			if pc != nil && len(pc.pending) > 0 {
				p := pc.pending
				pc.pending = nil
				now := time.Now()
				l.parse(pc, p, frameTimes{now, now})
			}
		}
		r.wg.Go(l.run)
	}
	return r, nil
}

// detach turns c into a bare descriptor: a duplicate of the socket's, with
// Go's own descriptor closed (which takes it out of the runtime's poller).
func detach(c *wsClient, i int) (*pollConn, error) {
	sc, ok := c.c.(syscall.Conn)
	if !ok {
		c.c.Close()
		return nil, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		c.c.Close()
		return nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = syscall.Dup(int(s)) }); err != nil {
		c.c.Close()
		return nil, err
	}
	if derr != nil {
		c.c.Close()
		return nil, derr
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1); err != nil {
		syscall.Close(fd)
		c.c.Close()
		return nil, err
	}
	pc := &pollConn{fd: fd, idx: i}
	if n := c.br.Buffered(); n > 0 {
		b, _ := c.br.Peek(n)
		pc.pending = append([]byte(nil), b...)
	}
	c.c.Close()
	return pc, nil
}

func (l *pollLoop) run() {
	// The thread is the loop's alone and ends with it (no unlock), so
	// its priority goes nowhere else.
	runtime.LockOSThread()
	setClientNice()
	events := make([]syscall.EpollEvent, 512)
	for !l.r.stopped.Load() {
		n, err := epollPoll(l.epfd, events)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			if pc := l.byFD[ev.Fd]; pc != nil {
				l.read(pc)
			}
		}
		if n < len(events) {
			time.Sleep(pollInterval)
		}
	}
}

// read reads what one readable connection has. The descriptor is
// edge-triggered: a read that does not fill the buffer took everything
// the socket held, and data that comes later raises a new event.
func (l *pollLoop) read(pc *pollConn) {
	for {
		n, arrived, err := l.recv(pc.fd)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return
		}
		if n <= 0 || err != nil {
			l.drop(pc)
			return
		}
		now := time.Now()
		if arrived.IsZero() {
			arrived = now
		}
		p := l.buf[:n]
		if pc.pending != nil {
			p = append(pc.pending, p...)
			pc.pending = nil
		}
		if !l.parse(pc, p, frameTimes{arrived, now}) || n < len(l.buf) {
			return
		}
	}
}

// parse hands the complete frames in p to the callback and keeps the
// rest for the next read. false: the connection was dropped.
func (l *pollLoop) parse(pc *pollConn, p []byte, now frameTimes) bool {
	if !parseFrames(pc, p, now, l.frame) {
		l.drop(pc)
		return false
	}
	return true
}

// parseFrames hands the complete data frames in p to frame, answers
// pings, and keeps the start of a frame that p cuts in pc.pending. false:
// the server closed the websocket (what follows is dropped).
func parseFrames(pc *pollConn, p []byte, now frameTimes, frame func(i int, payload []byte, at frameTimes)) bool {
	for {
		payload, op, size, ok := parseFrame(p)
		if !ok {
			if len(p) > 0 {
				pc.pending = append([]byte(nil), p...)
			}
			return true
		}
		p = p[size:]
		switch op {
		case 0x8: // close
			return false
		case 0x9:
			pong(pc.fd, payload)
		case 0xa:
		default:
			frame(pc.idx, payload, now)
		}
	}
}

// pong answers a ping with the same payload, masked with a zero key.
func pong(fd int, payload []byte) {
	if len(payload) <= 125 {
		var b [6 + 125]byte
		b[0], b[1] = 0x8a, 0x80|byte(len(payload))
		k := copy(b[6:], payload)
		syscall.Write(fd, b[:6+k])
	}
}

// parseFrame parses one unmasked server frame at the start of p.
func parseFrame(p []byte) (payload []byte, op byte, size int, ok bool) {
	if len(p) < 2 {
		return nil, 0, 0, false
	}
	op, n, h := p[0]&0x0f, int(p[1]&0x7f), 2
	switch n {
	case 126:
		if len(p) < 4 {
			return nil, 0, 0, false
		}
		n, h = int(p[2])<<8|int(p[3]), 4
	case 127:
		if len(p) < 10 {
			return nil, 0, 0, false
		}
		n = 0
		for _, b := range p[2:10] {
			n = n<<8 | int(b)
		}
		h = 10
	}
	if len(p) < h+n {
		return nil, 0, 0, false
	}
	return p[h : h+n], op, h + n, true
}

func (l *pollLoop) drop(pc *pollConn) {
	syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, pc.fd, nil)
	l.byFD[pc.fd] = nil
	syscall.Close(pc.fd)
}

// stop ends the loops and closes every connection.
func (r *wsReaders) stop() {
	r.stopped.Store(true)
	r.wg.Wait()
	r.closeLoops()
}

func (r *wsReaders) closeLoops() {
	for _, l := range r.loops {
		for _, pc := range l.byFD {
			if pc != nil {
				syscall.Close(pc.fd)
			}
		}
		l.byFD = nil
		syscall.Close(l.epfd)
	}
	r.loops = nil
}

// epollET is EPOLLET as the event mask's type holds it.
const epollET = 1 << 31

// The loop's system calls never block (the sockets are non-blocking, the
// epoll_wait does not wait), so they are raw: the scheduler does not
// count the loop as gone into a system call, which would have its monitor
// thread hand the loop's processor to another thread whenever a call
// outlasts a tick.

// recv reads into l.buf what fd holds, with the kernel's arrival stamp
// of the last bytes read (zero when there is none). A frame cut over two
// reads gets the stamp of its end.
func (l *pollLoop) recv(fd int) (int, time.Time, error) {
	l.msg.SetControllen(len(l.oob))
	l.msg.Flags = 0
	n, _, errno := syscall.RawSyscall(syscall.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&l.msg)), 0)
	if errno != 0 {
		return -1, time.Time{}, errno
	}
	return int(n), rxStamp(l.oob[:l.msg.Controllen]), nil
}

// rxStamp finds the SCM_TIMESTAMPNS message among control messages oob.
func rxStamp(oob []byte) time.Time {
	for len(oob) >= syscall.SizeofCmsghdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if h.Len < syscall.SizeofCmsghdr || int(h.Len) > len(oob) {
			return time.Time{}
		}
		if h.Level == syscall.SOL_SOCKET && h.Type == syscall.SCM_TIMESTAMPNS && int(h.Len) >= syscall.SizeofCmsghdr+int(unsafe.Sizeof(syscall.Timespec{})) {
			ts := (*syscall.Timespec)(unsafe.Pointer(&oob[syscall.SizeofCmsghdr]))
			return time.Unix(ts.Unix())
		}
		next := (int(h.Len) + 7) &^ 7
		if next >= len(oob) {
			break
		}
		oob = oob[next:]
	}
	return time.Time{}
}

// epollPoll is epoll_wait with a zero timeout.
func epollPoll(epfd int, events []syscall.EpollEvent) (int, error) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
