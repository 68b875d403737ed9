package index

import (
	"cmp"
	"slices"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/ordered"
)

// Body is how an entry's or a reply's body is kept in memory, if it is.
// The memory engine Keeps every body (in the message itself) for good;
// the file engine Holds one only until the write that carries it is in
// its database file, then Drops it and reads it from the file when asked
// (Journal.ReadBody).
type Body struct {
	p atomic.Pointer[[]byte]
}

// Hold keeps b as the body until Drop is called with the pointer it
// returns.
func (bd *Body) Hold(b []byte) *[]byte {
	p := &b
	bd.p.Store(p)
	return p
}

// Drop forgets the body held under p, unless another was kept since.
func (bd *Body) Drop(p *[]byte) { bd.p.CompareAndSwap(p, nil) }

// load returns m with the body held for it, if one is.
func (bd *Body) load(m store.Message) (store.Message, bool) {
	if p := bd.p.Load(); p != nil {
		m.Body = *p
		return m, true
	}
	return m, false
}

// state is where an entry is in its queue.
type state uint8

const (
	queued        state = iota // appended, not handed out
	pending                    // delivered in pending mode, not acknowledged
	leased                     // handed out by a TakeDelete lease, not settled
	leasedPending              // handed out by a TakePending lease, not settled
)

// Entry is one message of a queue. It is 128 bytes, as the memory engine's
// allocation class has it; what only some entries need (a lease, a
// remembered dedup key) lives in its queue.
//
// Dead ends (issue 20, 2026-12-08): an 80-byte entry (expiry in Unix
// nanoseconds, content type a unique.Handle, dedup key apart) cut the heap
// a kept message holds from 265.6 to 217.6 B and BenchmarkAppendKeep's CPU
// by 12%, yet left tunnel/wrk's memory engine where it was (1.35x against
// 1.30x baseline-hello's CPU per request, 9 runs each). Keeping bodies in
// 1 MB slabs with pointer-free entries, or outside the Go heap altogether,
// cost a plain handler as much as a buffer and a record per message did:
// what a stored message costs a produce is not its layout.
type Entry struct {
	Body
	msg store.Message // Body: see kept
	// dedupUntil is when the message's dedup key stops being remembered.
	dedupUntil unixNano
	// mark is the engine's (the file engine: the batch that last wrote
	// the entry).
	mark  uint32
	state state
	kept  bool // the body is msg.Body, for good
}

// Keep keeps b as e's body for good, in e itself. The shard lock must be
// held.
func (e *Entry) Keep(b []byte) {
	e.msg.Body = b
	e.kept = true
}

// message returns e's message with its body, if it is kept in memory.
func (e *Entry) message() (store.Message, bool) {
	if e.kept {
		return e.msg, true
	}
	return e.load(e.msg)
}

// MessageID implements ordered.Entry.
func (e *Entry) MessageID() store.ID { return e.msg.ID }

// Message returns e's message without its body.
func (e *Entry) Message() store.Message {
	m := e.msg
	m.Body = nil
	return m
}

// DedupUntil is when e's dedup key stops being remembered once e is
// delivered.
func (e *Entry) DedupUntil() time.Time { return e.dedupUntil.time() }

// Pending reports whether e is pending, as the engine records it: a
// message under a lease is still queued there.
func (e *Entry) Pending() bool { return e.state == pending }

// Mark returns the number the engine keeps with e; SetMark sets it. The
// shard lock must be held.
func (e *Entry) Mark() uint32 { return e.mark }

// SetMark sets e's mark.
func (e *Entry) SetMark(m uint32) { e.mark = m }

// Reply is a stored reply.
type Reply struct {
	Body
	msg  store.Message // Body: see kept
	kept bool
}

// Keep keeps b as r's body for good, in r itself. The shard lock must be
// held.
func (r *Reply) Keep(b []byte) {
	r.msg.Body = b
	r.kept = true
}

// message returns r with its body, if it is kept in memory.
func (r *Reply) message() (store.Message, bool) {
	if r.kept {
		return r.msg, true
	}
	return r.load(r.msg)
}

// Message returns r without its body.
func (r *Reply) Message() store.Message {
	m := r.msg
	m.Body = nil
	return m
}

// unixNano is an instant in Unix nanoseconds, zero for none: 8 bytes where
// a time.Time takes 24.
type unixNano int64

func nanoOf(t time.Time) unixNano {
	if t.IsZero() {
		return 0
	}
	return unixNano(t.UnixNano())
}

func (n unixNano) time() time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(n))
}

// after reports whether n is after t.
func (n unixNano) after(t time.Time) bool { return int64(n) > t.UnixNano() }

// lease is the lease an entry is under.
type lease struct {
	token int64
	until unixNano
}

// seen is a remembered dedup key of a delivered message.
type seen struct {
	until time.Time
	id    store.ID
	n     uint64 // its place in queue.order
}

// seenRef is a place in queue.order.
type seenRef struct {
	key string
	n   uint64
}

// queue is one key's messages, their leases and dedup keys.
type queue struct {
	ordered.Queue[*Entry]
	// queued maps a dedup key to its entry while the entry is queued or
	// under a lease.
	queued map[string]*Entry
	// seen remembers dedup keys of delivered messages, until their window
	// ends.
	seen map[string]seen
	// leases are those of the entries under one.
	leases map[*Entry]lease
	// max > 0 bounds len(seen); order lists the seen keys oldest first
	// (with places of keys forgotten since), to forget the oldest.
	max   int
	order []seenRef
	nseen uint64
}

func (q *queue) setQueued(k string, e *Entry) {
	if q.queued == nil {
		q.queued = make(map[string]*Entry)
	}
	q.queued[k] = e
}

// available reports whether e may be handed out: queued, or under a lease
// that ran out.
func (q *queue) available(e *Entry, now time.Time) bool {
	switch e.state {
	case queued:
		return true
	case leased, leasedPending:
		return !q.leases[e].until.after(now)
	}
	return false
}

// pendingNow reports whether e counts as pending: delivered in pending
// mode, or handed out in pending mode under a lease that has not run out.
func (q *queue) pendingNow(e *Entry, now time.Time) bool {
	switch e.state {
	case pending:
		return true
	case leasedPending:
		return q.leases[e].until.after(now)
	}
	return false
}

// lease puts e under a lease in state st.
func (q *queue) lease(e *Entry, st state, l lease) {
	if q.leases == nil {
		q.leases = make(map[*Entry]lease)
	}
	e.state = st
	q.leases[e] = l
}

// unlease ends e's lease, if any, leaving it in state st.
func (q *queue) unlease(e *Entry, st state) {
	if e.state == leased || e.state == leasedPending {
		delete(q.leases, e)
	}
	e.state = st
}

// remember remembers dedup key k of message id until then, forgetting the
// keys whose windows end first beyond q.max. It returns the keys
// forgotten.
func (q *queue) remember(k string, id store.ID, until time.Time) []string {
	if q.seen == nil {
		q.seen = make(map[string]seen)
	}
	q.nseen++
	q.seen[k] = seen{until: until, id: id, n: q.nseen}
	if q.max <= 0 {
		return nil
	}
	// Windows are mostly of one length per queue: a key mostly goes last.
	r := seenRef{k, q.nseen}
	i := len(q.order)
	for i > 0 && q.seen[q.order[i-1].key].until.After(until) {
		i--
	}
	q.order = slices.Insert(q.order, i, r)
	return q.trim()
}

// bound makes max (> 0) q's bound on the keys it remembers, and returns
// the keys it forgets for it. The remembered keys are listed in order
// when a bound first applies.
func (q *queue) bound(max int) []string {
	if max <= 0 {
		return nil
	}
	if q.max <= 0 && len(q.seen) > 0 {
		q.order = q.order[:0]
		for k, s := range q.seen {
			q.order = append(q.order, seenRef{k, s.n})
		}
		sortRefs(q.order, q.seen)
	}
	q.max = max
	return q.trim()
}

// trim forgets the keys whose windows end first beyond q.max.
func (q *queue) trim() (forgotten []string) {
	for len(q.seen) > q.max && len(q.order) > 0 {
		old := q.order[0]
		q.order = q.order[1:]
		if s, ok := q.seen[old.key]; ok && s.n == old.n {
			delete(q.seen, old.key)
			forgotten = append(forgotten, old.key)
		}
	}
	if len(q.order) > 2*len(q.seen)+32 {
		q.compactOrder()
	}
	return forgotten
}

// compactOrder drops the places of keys forgotten since.
func (q *queue) compactOrder() {
	out := q.order[:0]
	for _, r := range q.order {
		if s, ok := q.seen[r.key]; ok && s.n == r.n {
			out = append(out, r)
		}
	}
	clear(q.order[len(out):])
	q.order = out
}

// sortRefs sorts refs by the window ends of their keys, then by place.
func sortRefs(refs []seenRef, seen map[string]seen) {
	slices.SortFunc(refs, func(a, b seenRef) int {
		if c := seen[a.key].until.Compare(seen[b.key].until); c != 0 {
			return c
		}
		return cmp.Compare(a.n, b.n)
	})
}
