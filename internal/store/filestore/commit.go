package filestore

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/index"
)

// mut is one change to the database: a put, or a delete when val is nil.
type mut struct {
	bucket uint8
	key    []byte
	val    []byte
}

// wset is the write set of one operation: the changes it made to the index,
// as changes to the database. It is the operation's index.Journal
// (journal.go).
type wset struct {
	s     *Store
	op    index.Op
	muts  []mut
	maxID store.ID // the largest id the operation assigned
	// held are bodies kept in memory until their records are in the
	// database file (reads take bodies from there).
	held []held
	// marked are the entries written, marked with their batch once it is
	// known; wait is set when the operation hands out an entry whose last
	// write is not durable yet.
	marked []*index.Entry
	wait   bool
}

type held struct {
	slot *index.Body
	body *[]byte
}

// batch is everything queued between two commits; done is closed when it
// is durable or failed.
type batch struct {
	gen   uint32 // batches are numbered as they are started; see committer.durable
	seq   uint64
	muts  []mut
	maxID store.ID
	held  []held
	n     int           // operations waiting on it
	lead  chan struct{} // a token here makes one of them write it
	done  chan struct{}
	err   error
}

func newBatch(gen uint32) *batch {
	return &batch{gen: gen, done: make(chan struct{}), lead: make(chan struct{}, 1)}
}

// sizedLike gives b room for as many changes and bodies as prev had: the
// batches of a busy server are alike, and their slices then grow once.
func (b *batch) sizedLike(prev *batch) *batch {
	b.muts = make([]mut, 0, len(prev.muts))
	b.held = make([]held, 0, len(prev.held))
	return b
}

// release drops the bodies of b from memory: they are in the database.
func (b *batch) release() {
	for _, h := range b.held {
		h.slot.Drop(h.body)
	}
	b.held = nil
}

// committer is the group commit. Operations queue their write sets with
// submit (under their shard lock, so that the log sees the changes in the
// order the index did) and wait on the batch. The operation that finds
// nobody writing writes the current batch itself (its own write included)
// as one synced log record; writes queued meanwhile form the next batch,
// and the writer hands the next turn to one of their operations. A batch
// is written by a goroutine that is running anyway, and no goroutine has
// to be woken to start a write.
//
// Operations whose answers do not rest on their changes (settling a lease,
// sweeping) queue them with submitLazy and do not wait: their changes go
// out with the next batch, and when no operation waits for one, the
// flusher goroutine writes it.
type committer struct {
	s       *Store
	mu      sync.Mutex
	idle    *sync.Cond // signalled when writing stops
	cur     *batch
	writing bool   // some goroutine is writing a batch, or the flusher is asked to
	nextSeq uint64 // only the writer touches it
	// kick asks the flusher goroutine to write the current batch: it
	// holds only lazy changes. quit stops the flusher; flushed is closed
	// when it has.
	kick    chan struct{}
	quit    chan struct{}
	flushed chan struct{}
	// triggered is the log generation for which an early checkpoint was
	// asked; only the writer touches it.
	triggered uint64
	// gen numbers the batches as they are started (wrapping); done is the
	// number of the last batch that finished, durable or failed (a failed
	// batch's entries are dropped from the index).
	gen  uint32
	done atomic.Uint32
}

func newCommitter(s *Store, nextSeq uint64) *committer {
	c := &committer{
		s: s, cur: newBatch(1), gen: 1, nextSeq: nextSeq,
		kick: make(chan struct{}, 1), quit: make(chan struct{}), flushed: make(chan struct{}),
	}
	c.idle = sync.NewCond(&c.mu)
	go c.flusher()
	return c
}

// submit queues w and returns the batch to wait on, and whether the
// caller is to write it.
func (c *committer) submit(w *wset) (*batch, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.add(w)
	b.n++
	if c.writing {
		return b, false
	}
	c.writing = true
	return b, true
}

// submitLazy queues w without waiting for it: it is written with the next
// batch. It returns that batch.
func (c *committer) submitLazy(w *wset) *batch {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.add(w)
	if !c.writing {
		c.writing = true
		c.kick <- struct{}{}
	}
	return b
}

// add adds w to the current batch; c.mu must be held.
func (c *committer) add(w *wset) *batch {
	b := c.cur
	b.muts = append(b.muts, w.muts...)
	b.held = append(b.held, w.held...)
	if w.maxID.Compare(b.maxID) > 0 {
		b.maxID = w.maxID
	}
	return b
}

// flusher writes the batches that only lazy changes are queued in.
func (c *committer) flusher() {
	defer close(c.flushed)
	for {
		select {
		case <-c.kick:
			c.writeNext()
		case <-c.quit:
			return
		}
	}
}

// wait waits until b is durable or failed, writing it when it is the
// caller's turn.
func (c *committer) wait(b *batch, write bool) error {
	for {
		if write {
			c.writeNext()
		}
		select {
		case <-b.done:
			return b.err
		case <-b.lead:
			write = true
		}
	}
}

// writeNext writes the current batch, then hands the turn to an operation
// of the batch queued meanwhile, if any.
func (c *committer) writeNext() {
	c.mu.Lock()
	b := c.cur
	c.cur = c.next().sizedLike(b)
	c.mu.Unlock()
	c.flush(b)
	c.done.Store(b.gen)
	c.mu.Lock()
	switch {
	case c.cur.n > 0:
		c.cur.lead <- struct{}{}
	case len(c.cur.muts) > 0:
		c.kick <- struct{}{} // lazy changes only: nobody waits to write them
	default:
		c.writing = false
		c.idle.Broadcast()
	}
	c.mu.Unlock()
}

// failQueued fails the batch being collected; the caller is the writer.
func (c *committer) failQueued(err error) {
	c.mu.Lock()
	b := c.cur
	c.cur = c.next()
	c.mu.Unlock()
	b.err = err
	close(b.done)
}

// next starts the next batch; c.mu must be held.
func (c *committer) next() *batch {
	c.gen++
	return newBatch(c.gen)
}

// durable reports whether the batch numbered gen has finished (marks of
// entries loaded from the files are 0, which always has).
func (c *committer) durable(gen uint32) bool {
	return gen == 0 || int32(gen-c.done.Load()) <= 0
}

// close waits for the last write and stops the flusher; nothing may be
// submitted after it.
func (c *committer) close() {
	c.sync()
	close(c.quit)
	<-c.flushed
}

// sync waits until everything queued so far, lazy changes included, is
// written (or failed).
func (c *committer) sync() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.writing {
		c.idle.Wait()
	}
}

// flush makes b durable.
func (c *committer) flush(b *batch) {
	if len(b.muts) == 0 {
		close(b.done)
		return
	}
	b.seq = c.nextSeq
	direct, err := c.write(b)
	if err != nil {
		b.err = c.s.writeError(err)
		close(b.done)
		c.s.recover(b.err)
		return
	}
	c.nextSeq++
	if direct {
		b.release()
	} else {
		c.s.cp.add(b)
	}
	close(b.done)
	c.s.committed()
}

// write makes b durable: as a log record, or, when it is too large for
// one, straight into the database after everything before it.
func (c *committer) write(b *batch) (direct bool, err error) {
	s := c.s
	rec := appendBatch(s.wal.recordBuf(), b)
	if len(rec)-walRecHeader > s.wal.maxPayload() {
		return true, s.cp.direct(b)
	}
	err = s.wal.append(b.seq, rec)
	if err == errWALFull {
		// The other file can be reused once its records are in the
		// database; usually a checkpoint has long seen to that.
		next := s.wal.other()
		if err := s.cp.waitApplied(next.lastSeq); err != nil {
			return false, err
		}
		if err := s.wal.rotateTo(1-s.wal.cur, b.seq); err != nil {
			return false, err
		}
		err = s.wal.append(b.seq, rec)
	}
	if err == nil && s.wal.used() > 0.5 && c.triggered != s.wal.files[s.wal.cur].gen {
		// Half way through this file: see that the other one is free in
		// time.
		c.triggered = s.wal.files[s.wal.cur].gen
		s.cp.trigger()
	}
	return false, err
}

// checkpointer applies logged batches to the database file in the
// background, each checkpoint one synced transaction, so that log files
// can be reused and bodies dropped from memory.
type checkpointer struct {
	s        *Store
	interval time.Duration
	// run is held while a checkpoint is applied, and while the index is
	// reloaded from the database and the batches not yet in it.
	run sync.Mutex

	mu        sync.Mutex
	cond      *sync.Cond
	unapplied []*batch
	pending   int    // changes in unapplied
	applied   uint64 // sequence number of the last batch in the database
	attempts  uint64
	err       error // of the last attempt

	kick chan struct{}
	quit chan struct{}
	done chan struct{}
}

// checkpointChanges triggers a checkpoint early when this many changes wait.
const checkpointChanges = 8192

func newCheckpointer(s *Store, applied uint64, interval time.Duration) *checkpointer {
	cp := &checkpointer{
		s:        s,
		interval: interval,
		applied:  applied,
		kick:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	cp.cond = sync.NewCond(&cp.mu)
	go cp.loop()
	return cp
}

func (cp *checkpointer) trigger() {
	select {
	case cp.kick <- struct{}{}:
	default:
	}
}

func (cp *checkpointer) add(b *batch) {
	cp.mu.Lock()
	cp.unapplied = append(cp.unapplied, b)
	cp.pending += len(b.muts)
	many := cp.pending >= checkpointChanges
	cp.mu.Unlock()
	if many {
		cp.trigger()
	}
}

func (cp *checkpointer) loop() {
	defer close(cp.done)
	t := time.NewTicker(cp.interval)
	defer t.Stop()
	for {
		select {
		case <-cp.quit:
			cp.checkpoint()
			return
		case <-cp.kick:
		case <-t.C:
		}
		cp.checkpoint()
	}
}

// close applies what is left and stops the loop; it reports the last
// checkpoint's failure, whose batches stay in the log for the next open.
func (cp *checkpointer) close() error {
	close(cp.quit)
	<-cp.done
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.err
}

// checkpoint applies every logged batch not yet in the database.
func (cp *checkpointer) checkpoint() {
	cp.run.Lock()
	defer cp.run.Unlock()
	cp.mu.Lock()
	bs := cp.unapplied
	cp.mu.Unlock()
	if len(bs) == 0 {
		return
	}
	last := bs[len(bs)-1].seq
	err := cp.s.apply(bs, last)
	cp.mu.Lock()
	cp.attempts++
	wasFailing := cp.err != nil
	if err != nil {
		cp.err = cp.s.writeError(err)
		if !wasFailing {
			cp.s.log.Warn("file store: checkpoint failed; writes go on in the log while it has room", "path", cp.s.path, "err", err)
		}
	} else {
		cp.err = nil
		cp.applied = last
		cp.unapplied = append([]*batch(nil), cp.unapplied[len(bs):]...)
		cp.pending = 0
		for _, b := range cp.unapplied {
			cp.pending += len(b.muts)
		}
		if wasFailing {
			cp.s.log.Info("file store: checkpoints work again", "path", cp.s.path)
		}
	}
	cp.cond.Broadcast()
	cp.mu.Unlock()
	if err == nil {
		for _, b := range bs {
			b.release()
		}
	}
}

// waitApplied waits until batch seq is in the database, or a checkpoint
// attempt made after the call fails.
func (cp *checkpointer) waitApplied(seq uint64) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for cp.applied < seq {
		a := cp.attempts
		cp.trigger()
		for cp.attempts == a {
			cp.cond.Wait()
		}
		if cp.applied < seq && cp.err != nil {
			return cp.err
		}
	}
	return nil
}

// direct applies b straight to the database, after every logged batch.
func (cp *checkpointer) direct(b *batch) error {
	cp.run.Lock()
	defer cp.run.Unlock()
	cp.mu.Lock()
	bs := append(cp.unapplied[:len(cp.unapplied):len(cp.unapplied)], b)
	cp.mu.Unlock()
	if err := cp.s.apply(bs, b.seq); err != nil {
		return err
	}
	cp.mu.Lock()
	cp.applied = b.seq
	cp.unapplied = nil
	cp.pending = 0
	cp.err = nil
	cp.mu.Unlock()
	for _, b := range bs[:len(bs)-1] {
		b.release()
	}
	return nil
}

// overlay returns the changes of the logged batches not yet in the
// database, the last change of each record winning, and the largest id
// they assigned. The caller holds run.
func (cp *checkpointer) overlay() (map[string][]byte, store.ID) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	ov := make(map[string][]byte)
	var last store.ID
	for _, b := range cp.unapplied {
		for _, m := range b.muts {
			ov[string([]byte{m.bucket})+string(m.key)] = m.val
		}
		if b.maxID.Compare(last) > 0 {
			last = b.maxID
		}
	}
	return ov, last
}

// hold adds bodies to release once the last logged batch is in the
// database. The caller holds run.
func (cp *checkpointer) hold(hs []held) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if n := len(cp.unapplied); n > 0 {
		cp.unapplied[n-1].held = append(cp.unapplied[n-1].held, hs...)
		return
	}
	for _, h := range hs {
		h.slot.Drop(h.body)
	}
}
