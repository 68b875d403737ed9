package index

import (
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
	kept bool // the body is the message's own Body, for good
	p    atomic.Pointer[[]byte]
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

// load returns m with its body, if it is kept in memory.
func (bd *Body) load(m store.Message) (store.Message, bool) {
	if bd.kept {
		return m, true
	}
	if p := bd.p.Load(); p != nil {
		m.Body = *p
		return m, true
	}
	return m, false
}

// state is where an entry is in its queue.
type state uint8

const (
	queued  state = iota // appended, not handed out
	pending              // handed out in pending mode, not acknowledged
)

// Entry is one message of a queue.
type Entry struct {
	Body
	msg   store.Message // Body: see Body
	state state
	// dedupUntil is when the message's dedup key stops being remembered.
	dedupUntil unixNano
}

// Keep keeps b as e's body for good, in e itself. The shard lock must be
// held.
func (e *Entry) Keep(b []byte) {
	e.msg.Body = b
	e.kept = true
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
// handed out.
func (e *Entry) DedupUntil() time.Time { return e.dedupUntil.time() }

// unixNano is an instant in Unix nanoseconds, zero for none: 8 bytes where
// a time.Time takes 24, which keeps an Entry in a smaller allocation
// class.
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

// Pending reports whether e is pending.
func (e *Entry) Pending() bool { return e.state == pending }

// Reply is a stored reply.
type Reply struct {
	Body
	msg store.Message // Body: see Body
}

// Keep keeps b as r's body for good, in r itself. The shard lock must be
// held.
func (r *Reply) Keep(b []byte) {
	r.msg.Body = b
	r.kept = true
}

// Message returns r without its body.
func (r *Reply) Message() store.Message {
	m := r.msg
	m.Body = nil
	return m
}

// queue is one key's messages and dedup keys.
type queue struct {
	ordered.Queue[*Entry]
	// queued maps a dedup key to its entry while the entry is queued.
	queued map[string]*Entry
	// seen remembers dedup keys of messages handed out, until the time given.
	seen map[string]time.Time
}

func (q *queue) setQueued(k string, e *Entry) {
	if q.queued == nil {
		q.queued = make(map[string]*Entry)
	}
	q.queued[k] = e
}

func (q *queue) setSeen(k string, until time.Time) {
	if q.seen == nil {
		q.seen = make(map[string]time.Time)
	}
	q.seen[k] = until
}
