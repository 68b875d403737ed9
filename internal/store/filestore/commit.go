package filestore

import (
	"sync"
	"sync/atomic"

	"github.com/postern/postern/internal/store"
)

// mut is one change to the file: a put, or a delete when val is nil.
type mut struct {
	bucket uint8
	key    []byte
	val    []byte
}

// wset is the write set of one operation: the changes it made to the index,
// as changes to the file.
type wset struct {
	muts  []mut
	maxID store.ID // the largest id the operation assigned
	// held are bodies kept in memory until the write is durable.
	held []held
}

type held struct {
	slot *atomic.Pointer[[]byte]
	body *[]byte
}

// batch is everything queued between two commits; done is closed when it
// is durable or failed.
type batch struct {
	muts  []mut
	maxID store.ID
	done  chan struct{}
	err   error
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

// committer is the group commit: operations queue their write sets with
// submit (under their shard lock, so that the file sees the changes in the
// order the index did) and wait on the batch; one goroutine commits each
// batch as one synced transaction.
type committer struct {
	s    *Store
	mu   sync.Mutex
	cur  *batch
	kick chan struct{}
	quit chan struct{}
	done chan struct{}
}

func newCommitter(s *Store) *committer {
	c := &committer{
		s:    s,
		cur:  newBatch(),
		kick: make(chan struct{}, 1),
		quit: make(chan struct{}),
		done: make(chan struct{}),
	}
	go c.loop()
	return c
}

// submit queues w and returns the batch to wait on.
func (c *committer) submit(w *wset) *batch {
	c.mu.Lock()
	b := c.cur
	b.muts = append(b.muts, w.muts...)
	if w.maxID.Compare(b.maxID) > 0 {
		b.maxID = w.maxID
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return b
}

// failQueued fails the batch being collected.
func (c *committer) failQueued(err error) {
	c.mu.Lock()
	b := c.cur
	c.cur = newBatch()
	c.mu.Unlock()
	b.err = err
	close(b.done)
}

// close commits what is queued and stops the loop.
func (c *committer) close() {
	close(c.quit)
	<-c.done
}

func (c *committer) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.kick:
			c.flush()
		case <-c.quit:
			c.flush()
			return
		}
	}
}

// flush commits the batch collected so far.
func (c *committer) flush() {
	c.mu.Lock()
	b := c.cur
	c.cur = newBatch()
	c.mu.Unlock()
	if len(b.muts) == 0 {
		close(b.done)
		return
	}
	if err := c.s.commit(b); err != nil {
		b.err = c.s.writeError(err)
		close(b.done)
		c.s.recover(b.err)
		return
	}
	close(b.done)
	c.s.committed()
}

// finish queues the write set of an operation holding sh's lock, releases
// the lock and waits until the write is durable.
func (s *Store) finish(sh *shard, w *wset) error {
	if len(w.muts) == 0 {
		sh.mu.Unlock()
		return nil
	}
	b := s.c.submit(w)
	sh.mu.Unlock()
	<-b.done
	if b.err != nil {
		return b.err
	}
	// Durable: later reads take these bodies from the file, unless a newer
	// write replaced them meanwhile.
	for _, h := range w.held {
		h.slot.CompareAndSwap(h.body, nil)
	}
	return nil
}
