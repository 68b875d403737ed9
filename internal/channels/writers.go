package channels

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// writerPool writes the websocket subscribers' messages: a session with
// messages queued waits in ready, and up to max workers take sessions in
// turn and write what each has queued without ever waiting on a socket
// (session.drain). One publish to 10,000 subscribers so costs a few
// goroutines rather than 10,000 wake-ups, and each frame is one write(2)
// of bytes encoded once for all. Workers run only while sessions are
// ready: an idle server has none.
type writerPool struct {
	max int

	mu      sync.Mutex
	ready   []*session // ready[head:] wait, oldest first; each at most once
	head    int
	running int
	wg      sync.WaitGroup // the workers
	// rings are the idle workers' send rings (at most max); noRings: the
	// kernel gave none, ask no more; closed: the pool is done, keep none.
	rings   []*sendRing
	noRings bool
	closed  bool
}

// pendingWrite is one session's frame in a batch that a worker sends at
// once (fastWriter.drainAll): the descriptor it went to (-1: none, the
// connection was closed) and the outcome, as fastWriter.try reports it.
type pendingWrite struct {
	s     *session
	frame []byte
	fd    int
	n     int
	err   error
	done  bool // the ring reported the outcome
}

const (
	// poolBatch is how many sessions a worker takes at a time.
	poolBatch = 64
	// poolBacklog is how many sessions wait per running worker before
	// another starts.
	poolBacklog = 64
)

// newWriterPool returns a pool of up to GOMAXPROCS workers; with rings
// false they write with write(2) only.
func newWriterPool(rings bool) *writerPool {
	return &writerPool{max: runtime.GOMAXPROCS(0), noRings: !rings}
}

// schedule puts s at the end of the line, starting a worker if there is
// none or the line is long.
func (p *writerPool) schedule(s *session) {
	p.mu.Lock()
	if p.head > 0 && len(p.ready) == cap(p.ready) {
		// Reuse the space of the sessions already taken.
		n := copy(p.ready, p.ready[p.head:])
		clear(p.ready[n:])
		p.ready, p.head = p.ready[:n], 0
	}
	p.ready = append(p.ready, s)
	start := p.running == 0 || (p.running < p.max && len(p.ready)-p.head > p.running*poolBacklog)
	if start {
		p.running++
		p.wg.Add(1)
	}
	p.mu.Unlock()
	if start {
		go p.work()
	}
}

func (p *writerPool) work() {
	defer p.wg.Done()
	w := newFastWriter()
	w.ring = p.takeRing()
	var batch [poolBatch]*session
	for {
		p.mu.Lock()
		n := copy(batch[:], p.ready[p.head:])
		clear(p.ready[p.head : p.head+n])
		p.head += n
		if p.head == len(p.ready) {
			p.ready, p.head = p.ready[:0], 0
		}
		if n == 0 {
			p.running--
			p.mu.Unlock()
			p.putRing(w.ring)
			if writerLetGo != nil {
				writerLetGo()
			}
			return
		}
		p.mu.Unlock()
		w.drainAll(batch[:n])
		clear(batch[:n])
	}
}

// takeRing returns an idle worker's send ring, or a new one; nil where
// the kernel has none (the worker then writes with write(2)).
func (p *writerPool) takeRing() *sendRing {
	p.mu.Lock()
	if n := len(p.rings); n > 0 {
		r := p.rings[n-1]
		p.rings[n-1] = nil
		p.rings = p.rings[:n-1]
		p.mu.Unlock()
		return r
	}
	no := p.noRings
	p.mu.Unlock()
	if no {
		return nil
	}
	r := newSendRing(poolBatch)
	if r == nil {
		p.mu.Lock()
		p.noRings = true
		p.mu.Unlock()
	}
	return r
}

// putRing keeps a worker's ring for the next worker, or closes it.
func (p *writerPool) putRing(r *sendRing) {
	if r == nil {
		return
	}
	p.mu.Lock()
	if !p.closed && len(p.rings) < p.max {
		p.rings = append(p.rings, r)
		r = nil
	}
	p.mu.Unlock()
	if r != nil {
		r.close()
	}
}

// close releases the idle workers' rings; a worker that runs later closes
// its own when it exits. It is idempotent.
func (p *writerPool) close() {
	p.mu.Lock()
	p.closed = true
	rings := p.rings
	p.rings = nil
	p.mu.Unlock()
	for _, r := range rings {
		r.close()
	}
}

// wait waits for the workers to exit (they do once no session is ready).
func (p *writerPool) wait() { p.wg.Wait() }

// ringsMade counts the io_uring send rings set up, for tests.
var ringsMade atomic.Int64

// useRings lets the pool use io_uring where the kernel has it. A variable
// so that tests can run the pool's write(2) path on such kernels too.
var useRings = true

// fastWrites lets sessions on plain sockets use the pool. A variable only
// so that tests can run every session on its own writer, as TLS ones.
var fastWrites = true
