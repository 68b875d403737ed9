//go:build linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x)

package channels

import (
	"syscall"
	"unsafe"

	"github.com/postern/postern/internal/channels/iouring"
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
	r *iouring.Ring
}

// newSendRing returns a ring of entries sends, or nil where io_uring
// cannot be used (the pool then writes with write(2)).
func newSendRing(entries int) *sendRing {
	if !useRings {
		return nil
	}
	r, err := iouring.Setup(entries, &iouring.Params{Flags: iouring.SetupSubmitAll})
	if err != nil {
		return nil
	}
	ringsMade.Add(1)
	return &sendRing{r: r}
}

// close releases the ring. Requests not yet submitted are dropped with it.
func (r *sendRing) close() { r.r.Close() }

// send writes each held entry of ps (fd >= 0, at most r.entries of them)
// and records its outcome: n and err as fastWriter.try reports them, and
// done. false: the ring failed and must be closed; the entries not done
// were not sent (not even in part) and are the caller's to write.
func (r *sendRing) send(ps []pendingWrite) bool {
	queued := uint32(0)
	for i := range ps {
		p := &ps[i]
		if p.fd < 0 {
			continue
		}
		r.r.Push(&iouring.SQE{
			Opcode:   iouring.OpSend,
			FD:       int32(p.fd),
			Addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(p.frame)))),
			Len:      uint32(len(p.frame)),
			MsgFlags: syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL,
			UserData: uint64(i),
		})
		queued++
	}
	if queued == 0 {
		return true
	}
	// The sends never wait, so the call returns once the kernel made
	// them: raw, as the pool's write(2)s are (see writeNow).
	n, errno := r.r.EnterNow(queued, 0, 0)
	submitted := uint32(n)
	if errno != 0 {
		submitted = 0
	}
	ok := submitted == queued
	got := r.reap(ps)
	for got < submitted {
		// Not completed inline (not expected of a send that may not
		// wait): wait for the rest.
		_, errno := r.r.Enter(0, submitted-got, iouring.EnterGetevents)
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
	head, tail := r.r.Completions()
	for h := head; h != tail; h++ {
		cqe := r.r.CQE(h)
		if i := int(cqe.UserData); i < len(ps) {
			p := &ps[i]
			p.done = true
			switch {
			case cqe.Res >= 0:
				p.n = int(cqe.Res)
			case syscall.Errno(-cqe.Res) == syscall.EAGAIN:
				p.n = 0
			default:
				p.err = syscall.Errno(-cqe.Res)
			}
		}
	}
	r.r.Consumed(tail)
	return tail - head
}
