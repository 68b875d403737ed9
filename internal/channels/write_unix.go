//go:build linux || darwin || freebsd || netbsd || openbsd

package channels

import (
	"net"
	"syscall"
	"unsafe"
)

// rawConn returns nc's descriptor access for writes that never wait; nil
// when nc has none (a TLS connection).
func rawConn(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok || !fastWrites {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// fastWriter writes to sockets without waiting. Each pool worker has one,
// so that the functions handed to RawConn.Control are made once, not per
// write.
type fastWriter struct {
	p   []byte
	n   int
	err error
	fn  func(fd uintptr)
	fnv func(fd uintptr)

	// frames and iov: a session's frames that go out in one writev(2).
	frames [][]byte
	iov    []syscall.Iovec

	// ring, when not nil, writes the first frames of a batch of sessions
	// in one system call (drainAll); ps is that batch, next the entry
	// whose descriptor holdFn holds next.
	ring   *sendRing
	ps     []pendingWrite
	next   int
	holdFn func(fd uintptr)
}

func newFastWriter() *fastWriter {
	w := &fastWriter{}
	w.fn = w.write
	w.fnv = w.writev
	w.holdFn = w.holdNext
	return w
}

func (w *fastWriter) write(fd uintptr) {
	for {
		w.n, w.err = writeNow(int(fd), w.p)
		if w.err != syscall.EINTR {
			return
		}
	}
}

// try writes as much of p as the socket takes now (0 when it is full);
// an error means the connection is broken. Control holds the descriptor
// for the call, so a concurrent close cannot hand its number to another
// connection meanwhile.
func (w *fastWriter) try(rc syscall.RawConn, p []byte) (int, error) {
	w.p = p
	err := rc.Control(w.fn)
	w.p = nil
	if err != nil {
		return 0, err
	}
	return w.outcome()
}

// tryv is try for several frames, in one writev(2).
func (w *fastWriter) tryv(rc syscall.RawConn, frames [][]byte) (int, error) {
	w.iov = w.iov[:0]
	for _, f := range frames {
		if len(f) > 0 {
			v := syscall.Iovec{Base: unsafe.SliceData(f)}
			v.SetLen(len(f))
			w.iov = append(w.iov, v)
		}
	}
	if len(w.iov) == 0 {
		return 0, nil
	}
	err := rc.Control(w.fnv)
	clear(w.iov)
	if err != nil {
		return 0, err
	}
	return w.outcome()
}

func (w *fastWriter) writev(fd uintptr) {
	for {
		w.n, w.err = writevNow(int(fd), w.iov)
		if w.err != syscall.EINTR {
			return
		}
	}
}

// outcome is what try reports of the write just made.
func (w *fastWriter) outcome() (int, error) {
	if w.err == syscall.EAGAIN {
		return 0, nil
	}
	return max(w.n, 0), w.err
}

// drainAll drains sessions: with a ring, the first frame of each in one
// system call, then the rest of each as drain does.
func (w *fastWriter) drainAll(ss []*session) {
	if w.ring == nil {
		for _, s := range ss {
			s.drain(w)
		}
		return
	}
	ps := w.ps[:0]
	for _, s := range ss {
		if !s.wmu.TryLock() {
			go s.write(false, nil)
			continue
		}
		if frame, ok := s.takeFrame(); ok {
			ps = append(ps, pendingWrite{s: s, frame: frame, fd: -1})
		}
	}
	w.ps = ps
	if len(ps) > 0 {
		w.next = 0
		w.holdFrom()
	}
	for i := range ps {
		p := ps[i]
		ps[i] = pendingWrite{}
		if p.s.wrote(p.frame, p.n, p.err) {
			p.s.drainLocked(w, drainBurst-1)
		}
	}
}

// holdFrom holds the descriptors of w.ps[w.next:] one inside the other
// (RawConn.Control, through holdNext), then sends the batch while all
// are held: no descriptor in the ring can be closed and its number given
// to another connection before the kernel took the submission. An entry
// whose connection is closed already gets that error and no send.
func (w *fastWriter) holdFrom() {
	for w.next < len(w.ps) {
		p := &w.ps[w.next]
		err := p.s.rc.Control(w.holdFn)
		if err == nil {
			return // holdNext went on from there
		}
		p.err = err
		w.next++
	}
	w.sendHeld()
}

func (w *fastWriter) holdNext(fd uintptr) {
	w.ps[w.next].fd = int(fd)
	w.next++
	w.holdFrom()
}

// sendHeld sends the held batch through the ring; should the ring fail,
// it is closed and what it did not send goes by write(2).
func (w *fastWriter) sendHeld() {
	if w.ring.send(w.ps) {
		return
	}
	w.ring.close()
	w.ring = nil
	for i := range w.ps {
		p := &w.ps[i]
		if p.fd < 0 || p.done {
			continue
		}
		w.p = p.frame
		w.write(uintptr(p.fd))
		w.p = nil
		p.n, p.err = w.outcome()
	}
}
