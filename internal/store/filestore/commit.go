package filestore

import (
	"runtime"
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
	gen     uint32 // batches are numbered as they are started; see committer.durable
	muts    []mut
	size    int // bytes of keys and values in muts
	maxID   store.ID
	held    []held
	n       int           // operations waiting on it
	claimed bool          // a writer was chosen for it
	lead    chan struct{} // a token here makes one of its operations write it
	done    chan struct{}
	err     error

	// Set when it is sealed and written, under the committer's write
	// lock.
	prev   *batch // the batch sealed before it, until this one completes
	seq    uint64
	placed bool // seq, file and off were given (a write was attempted)
	file   int  // the log file and offset its record went to
	off    int64
	logged bool   // written as a log record, to be synced
	rec    []byte // the record, when it is written at its sync (wal.write)
	direct bool   // applied straight to the database
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

// lazyDelay is how long changes nobody waits for (settling a lease,
// sweeping) wait for a batch to carry them before one is written for them
// alone: under a stream of consumes, one sync every lazyDelay instead of
// one after the other.
const lazyDelay = 5 * time.Millisecond

// concurrentMin is how many operations a batch must hold to be started
// while others are being written. A sync costs the CPU tens of
// microseconds whatever it carries; batches of one or two, each synced
// on its own, would spend under load what the clients need.
const concurrentMin = 8

// gatherYields is how many times at most the writer of a batch lets the
// goroutines ready to run go first while each turn brings operations
// into the batch (committer.gather).
const gatherYields = 4

// gatherBytes seals a batch without gathering more once its changes
// reach this many bytes: a large record is worth writing at once.
const gatherBytes = 256 << 10

// committer is the group commit, pipelined. Operations queue their write
// sets with submit (under their shard lock, so that the log sees the
// changes in the order the index did) and wait on the batch being
// collected. While fewer than window batches are being written, the
// operation that opens a batch writes it: it seals the batch (later
// operations join the next one), writes it as one log record, and syncs
// it while the next batch is sealed, written and synced by one of its own
// operations. A batch is acknowledged in order: once it and every batch
// before it are durable. When window batches are in flight, operations
// collect in the current batch, and the first batch to finish hands the
// turn to one of them. A batch is written by a goroutine that is running
// anyway: no goroutine has to be woken to start a write.
//
// Before sealing a batch, its writer gathers the operations already on
// their way into it (gather): a sync costs about the same whatever it
// carries, and an operation that misses a batch waits for a whole sync
// more.
//
// How full batches get (issue 20, measured with perf on the node under
// wrk, 32 connections, produce only): about 15 operations a record over
// HTTP against 26-30 in-process (BenchmarkDurable). Over HTTP the
// operations just acknowledged are still answering and sending their
// next request when the next batch is sealed, so the connections split
// between the batch syncing and the one collecting (a batch that waited
// for them too would leave the CPU idle through its sync; not measured,
// as the gathering variants before were). Each record is
// one pwritev2 (about 0.065 a produce; bbolt adds 0.07 page writes and
// 0.001 fdatasyncs a produce), and costs 55-70 µs of CPU written alone
// (the write 35-45, the flush 10-25), about 90 µs under load: some 6 µs a
// produce. On a loaded machine, time from the token to its writer
// running (0.3-0.8 ms) and from the sync's return to the batch completed
// (the writer waiting for a P) make most of a commit's 1-1.5 ms, not the
// disk.
//
// Operations whose answers do not rest on their changes (settling a lease,
// sweeping) queue them with submitLazy and do not wait: their changes go
// out with the next batch, and when no operation waits for one within
// lazyDelay, a goroutine of the committer's writes it.
//
// A failed write fails its batch and every batch after it; once the last
// of those has finished, the log is set back to where the first failed
// record began and the store recovers (Store.recover).
type committer struct {
	s    *Store
	mu   sync.Mutex
	idle *sync.Cond // signalled when the last writer finishes
	cur  *batch
	tail *batch // the batch sealed last
	// active counts the writers chosen and not finished, at most window
	// (Options.SyncWindow).
	active int
	window int
	// broken is the error of the first batch that failed, until the log
	// is repaired; no writer is chosen meanwhile. resetAt is the first
	// failed batch that was given a place in the log.
	broken  error
	resetAt *batch
	// gen numbers the batches as they are started (wrapping); done is the
	// number of the last batch acknowledged (a failed batch counts once
	// the index was rebuilt without its entries).
	gen  uint32
	done atomic.Uint32

	// wmu is the write lock: batches are sealed and written to the log
	// under it, one at a time, in order. The fields below are its.
	wmu     sync.Mutex
	nextSeq uint64
	// werr is set when writing a record failed: nothing more is written
	// until the log is repaired.
	werr error
	// triggered is the log generation for which an early checkpoint was
	// asked.
	triggered uint64
	// writers tracks the goroutines writing lazy-only batches; lazy is
	// the timer that starts one, armed while lazyArmed. While syncing is
	// not zero, lazy changes are written at once.
	writers   sync.WaitGroup
	lazy      *time.Timer
	lazyArmed bool
	syncing   int

	// gatherDelay bounds how long a writer waits for the operations on
	// their way into its batch (Options.GatherDelay; 0: it does not).
	// gathering is the batch whose writer waits for them, joined where
	// submit tells it that they all joined.
	gatherDelay time.Duration
	gathering   *batch
	joined      chan struct{}
}

func newCommitter(s *Store, nextSeq uint64, window int, gatherDelay time.Duration) *committer {
	c := &committer{
		s: s, cur: newBatch(1), gen: 1, nextSeq: nextSeq, window: window,
		gatherDelay: gatherDelay, joined: make(chan struct{}, 1),
	}
	c.idle = sync.NewCond(&c.mu)
	return c
}

// submit queues w and returns the batch to wait on, and whether the
// caller is to write it. entered is set for an operation counted in
// Store.entering, which it leaves now.
func (c *committer) submit(w *wset, entered bool) (*batch, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.add(w)
	b.n++
	if entered {
		c.s.entering.Add(-1)
	}
	if c.gathering == b && c.gathered(b) {
		select {
		case c.joined <- struct{}{}:
		default:
		}
	}
	return b, c.claim(b)
}

// submitLazy queues w without waiting for it: it is written with the next
// batch. It returns that batch.
func (c *committer) submitLazy(w *wset) *batch {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.add(w)
	c.elect()
	return b
}

// add adds w to the current batch; c.mu must be held.
func (c *committer) add(w *wset) *batch {
	b := c.cur
	b.muts = append(b.muts, w.muts...)
	for _, m := range w.muts {
		b.size += len(m.key) + len(m.val)
	}
	b.held = append(b.held, w.held...)
	if w.maxID.Compare(b.maxID) > 0 {
		b.maxID = w.maxID
	}
	return b
}

// claim makes the caller b's writer, if b has none and another writer
// may start: none is writing, or fewer than window are and b holds
// concurrentMin operations. c.mu must be held.
func (c *committer) claim(b *batch) bool {
	if b.claimed || c.broken != nil || c.active >= c.window || c.active > 0 && b.n < concurrentMin {
		return false
	}
	b.claimed = true
	c.active++
	return true
}

// elect chooses a writer for the current batch, if it holds anything and
// one may start: one of its operations, or for lazy changes alone a
// goroutine of its own, after lazyDelay. c.mu must be held.
//
// Dead end (issue 20): after a sync the disk idles about 0.6 ms while the
// woken writer waits behind the operations just acknowledged and then
// yields in gather, and a finished writer that yields to it at once only
// moved that wait into gather (skipping gather's yields too halved it,
// but batches shrank from 14-15 operations to 11-13 and CPU per request
// rose about 8%, losing 9 of 12 interleaved pairs on busy cores). A
// finished writer that writes the next batch itself saves the hand-off
// but holds its own answer back a whole sync, and was no better.
func (c *committer) elect() {
	b := c.cur
	switch {
	case b.n == 0 && len(b.muts) == 0:
		return
	case b.n == 0 && c.syncing == 0:
		c.armLazy()
		return
	case !c.claim(b):
		return
	case b.n > 0:
		b.lead <- struct{}{}
		return
	}
	c.writeLater(b)
}

// armLazy starts the timer that writes lazy changes nobody carried;
// c.mu must be held.
func (c *committer) armLazy() {
	if c.lazyArmed {
		return
	}
	c.lazyArmed = true
	if c.lazy == nil {
		c.lazy = time.AfterFunc(lazyDelay, c.lazyDue)
		return
	}
	c.lazy.Reset(lazyDelay)
}

// lazyDue writes the lazy changes queued, unless an operation that waits
// carries them by now (or a writer is chosen for them later, when one
// finishes).
func (c *committer) lazyDue() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lazyArmed = false
	if b := c.cur; b.n == 0 && len(b.muts) > 0 && c.claim(b) {
		c.writeLater(b)
	}
}

// writeLater writes b, which only lazy changes are queued in, from a
// goroutine of its own; c.mu must be held.
func (c *committer) writeLater(b *batch) {
	c.writers.Add(1)
	go func() {
		defer c.writers.Done()
		c.write(b)
	}()
}

// wait waits until b is durable or failed, writing it when it is the
// caller's turn.
//
// Dead end (issue 20): waiting on done alone, the writer's token sent on
// it, in place of the select on two channels saved the select's few
// hundred nanoseconds but measured no change in CPU per request (1.01x,
// 4 pairs of tunnel/wrk in alternating order, load 4-10).
func (c *committer) wait(b *batch, write bool) error {
	for {
		if write {
			c.write(b)
		}
		select {
		case <-b.done:
			return b.err
		case <-b.lead:
			write = true
		}
	}
}

// write seals b, the current batch, whose writer the caller is: it
// writes it to the log, syncs it and acknowledges it once every batch
// before it is durable.
func (c *committer) write(b *batch) {
	c.gather(b)
	c.wmu.Lock()
	c.mu.Lock()
	c.cur = c.next().sizedLike(b)
	b.prev, c.tail = c.tail, b
	err := c.broken
	c.mu.Unlock()
	if err == nil && len(b.muts) > 0 {
		err = c.log(b)
	}
	c.wmu.Unlock()
	if err == nil && b.logged {
		err = c.s.wal.sync(b.file, b.off, b.rec)
		b.rec = nil
	}
	c.complete(b, err)
}

// gather lets the operations on their way into b, which the caller is
// to write, join it before it is sealed: while each turn brings some in,
// the goroutines ready to run go first (a request parsed and handled is
// about to queue its write), up to gatherYields turns; then the writer
// waits for the operations that began and have not queued their writes
// (Store.entering), at most gatherDelay. A batch of lazy changes alone,
// one of gatherBytes, and one that nobody else is on the way to are
// sealed at once.
func (c *committer) gather(b *batch) {
	if c.gatherDelay <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if b.n == 0 {
		return
	}
	for range gatherYields {
		n := b.n
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
		if b.n == n || b.size >= gatherBytes {
			break
		}
	}
	if c.gathered(b) {
		return
	}
	select {
	case <-c.joined: // left by an earlier batch
	default:
	}
	c.gathering = b
	defer func() { c.gathering = nil }()
	t := time.NewTimer(c.gatherDelay)
	defer t.Stop()
	for !c.gathered(b) {
		c.mu.Unlock()
		select {
		case <-c.joined:
			c.mu.Lock()
		case <-t.C:
			c.mu.Lock()
			return
		}
	}
}

// gathered reports whether b is to be sealed without waiting for more:
// no operation is on its way into it, or it is large enough. c.mu must
// be held.
func (c *committer) gathered(b *batch) bool {
	return c.s.entering.Load() <= 0 || b.size >= gatherBytes
}

// log writes b to the log, or for a batch too large for a record,
// straight to the database; c.wmu must be held.
func (c *committer) log(b *batch) error {
	if c.werr != nil {
		return c.werr
	}
	s := c.s
	b.seq, b.placed = c.nextSeq, true
	b.file, b.off = s.wal.cur, s.wal.off
	rec := appendBatch(s.wal.recordBuf(), b)
	var err error
	if len(rec)-walRecHeader > s.wal.maxPayload() {
		if err = c.settled(b); err == nil {
			err = s.cp.direct(b)
		}
		b.direct = err == nil
	} else {
		err = c.logRecord(b, rec)
	}
	if err != nil {
		c.werr = err
		return err
	}
	c.nextSeq++
	return nil
}

// logRecord writes rec, b's record, to the log, starting a new file when
// the current one is full; c.wmu must be held.
func (c *committer) logRecord(b *batch, rec []byte) error {
	s := c.s
	var err error
	b.rec, err = s.wal.write(b.seq, rec)
	if err == errWALFull {
		// No record goes to the other file while one before it may still
		// be syncing in this one: a crash then never leaves a file with
		// records whose predecessors the other file lost. The other file
		// can be reused once its records are in the database; usually a
		// checkpoint has long seen to that.
		if err := c.settled(b); err != nil {
			return err
		}
		if err := s.cp.waitApplied(s.wal.other().lastSeq); err != nil {
			return err
		}
		if err := s.wal.rotateTo(1-s.wal.cur, b.seq); err != nil {
			return err
		}
		b.file, b.off = s.wal.cur, s.wal.off
		b.rec, err = s.wal.write(b.seq, rec)
	}
	if err != nil {
		return err
	}
	b.logged = true
	if s.wal.used() > 0.5 && c.triggered != s.wal.files[s.wal.cur].gen {
		// Half way through this file: see that the other one is free in
		// time.
		c.triggered = s.wal.files[s.wal.cur].gen
		s.cp.trigger()
	}
	return nil
}

// settled waits until every batch sealed before b has finished, and
// reports whether one failed.
func (c *committer) settled(b *batch) error {
	if b.prev != nil {
		<-b.prev.done
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}

// complete acknowledges b, or fails it, once every batch before it has
// finished: err is what writing it met. A batch after a failed one fails
// too (it may rest on the failed one's changes). The last writer to
// finish after a failure repairs the log.
func (c *committer) complete(b *batch, err error) {
	if b.prev != nil {
		<-b.prev.done
	}
	c.mu.Lock()
	b.prev = nil
	if c.broken != nil {
		err = c.broken
	} else if err != nil {
		err = c.s.writeError(err)
		c.broken = err
	}
	if err != nil && b.placed && c.resetAt == nil {
		c.resetAt = b
	}
	c.mu.Unlock()
	switch {
	case err != nil:
		b.err = err
	case b.direct:
		b.release()
		c.s.committed()
	case b.logged:
		c.s.cp.add(b)
		c.s.committed()
	}
	if err == nil {
		// Before done is closed: the next batch's completion waits for
		// it, so the number only grows.
		c.done.Store(b.gen)
	}
	close(b.done)
	c.mu.Lock()
	c.active--
	repair := c.broken != nil && c.active == 0
	if !repair {
		c.elect()
		c.signalIdle()
	}
	c.mu.Unlock()
	if repair {
		c.repair()
	}
}

// repair runs once every batch written after a failure has failed: the
// log goes back to where the first failed record began (its space and
// what followed erased, as far as the disk lets), the store rebuilds its
// index from what is durable, and writers may start again.
func (c *committer) repair() {
	c.mu.Lock()
	err, at := c.broken, c.resetAt
	c.mu.Unlock()
	c.wmu.Lock()
	if at != nil {
		c.s.wal.truncate(at.file, at.off, at.seq)
		c.nextSeq = at.seq
	}
	c.werr = nil
	c.wmu.Unlock()
	c.s.recover(err)
	c.mu.Lock()
	// The failed batches' entries are gone from the index: their numbers
	// may count as finished.
	c.done.Store(c.tail.gen)
	c.broken, c.resetAt = nil, nil
	c.elect()
	c.signalIdle()
	c.mu.Unlock()
}

// signalIdle wakes sync when nothing is being written; c.mu must be held.
func (c *committer) signalIdle() {
	if c.active == 0 && c.broken == nil {
		c.idle.Broadcast()
	}
}

// failQueued fails the batch being collected; the caller is repairing
// the log, and no writer is chosen meanwhile.
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

// close writes what is queued and waits for the last write; nothing may
// be submitted after it.
func (c *committer) close() {
	c.sync()
	c.mu.Lock()
	if c.lazy != nil {
		c.lazy.Stop()
	}
	c.mu.Unlock()
	c.writers.Wait()
}

// sync writes everything queued so far, lazy changes included, and waits
// until it is written (or failed).
func (c *committer) sync() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.syncing++
	defer func() { c.syncing-- }()
	for {
		if c.active == 0 && c.broken == nil {
			if b := c.cur; b.n == 0 && len(b.muts) == 0 {
				return
			}
			c.elect()
		}
		c.idle.Wait()
	}
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
