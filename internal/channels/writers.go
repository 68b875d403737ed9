package channels

import (
	"runtime"
	"sync"
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
}

const (
	// poolBatch is how many sessions a worker takes at a time.
	poolBatch = 64
	// poolBacklog is how many sessions wait per running worker before
	// another starts.
	poolBacklog = 64
)

func newWriterPool() *writerPool {
	return &writerPool{max: runtime.GOMAXPROCS(0)}
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
			if writerLetGo != nil {
				writerLetGo()
			}
			return
		}
		p.mu.Unlock()
		for i, s := range batch[:n] {
			s.drain(w)
			batch[i] = nil
		}
	}
}

// wait waits for the workers to exit (they do once no session is ready).
func (p *writerPool) wait() { p.wg.Wait() }

// fastWrites lets sessions on plain sockets use the pool. A variable only
// so that tests can run every session on its own writer, as TLS ones.
var fastWrites = true
