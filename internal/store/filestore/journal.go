package filestore

import (
	"sync"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/index"
)

// The queue index and its logic are the shared index's (internal/store/
// index); the file engine is its Backend. Every change an operation makes
// to the index is recorded in the operation's write set as puts and
// deletes of records, which the committer logs as one batch with those of
// the operations around it. A body stays in the index (index.Body) until
// its record is in the database file.

// backend is the file engine as the index's Backend.
type backend struct{ s *Store }

// wsets keeps write sets for reuse: every operation takes one, and the
// committer copies what it needs out of it.
var wsets = sync.Pool{New: func() any { return new(wset) }}

// Begin implements index.Backend.
func (b backend) Begin(op index.Op) index.Journal {
	w := wsets.Get().(*wset)
	w.s, w.op = b.s, op
	if op == index.OpWrite {
		// On its way into the batch being collected, whose writer waits
		// for it (committer.gather).
		b.s.entering.Add(1)
		if enteredHook != nil {
			enteredHook()
		}
	}
	return w
}

// enteredHook, when set by a test, runs in every operation that waits
// for its write, once it is counted in Store.entering.
var enteredHook func()

// release returns w, whose changes were queued or dropped, for reuse.
func (w *wset) release() {
	clear(w.muts)
	clear(w.held)
	clear(w.marked)
	*w = wset{muts: w.muts[:0], held: w.held[:0], marked: w.marked[:0]}
	wsets.Put(w)
}

// End implements index.Backend: it queues the write set, releases the
// shard and waits until the write is durable. An index.OpWrite that
// changed nothing still waits for the writes queued before it: its answer
// (a suppressed duplicate, an ack of a message already gone) may rest on
// them, and must not be given before they are durable.
//
// Quiet operations (taking under a lease, settling, sweeping) wait only
// for the durability of what they hand out. Their own changes are queued
// for the next batch without waiting: settling a delivery happens after
// its answer was written, so no answer rests on it, and a settling lost
// to a crash leaves the message queued, to be handed out again (the
// at-least-once that a failure is allowed). Every write queued after them
// is durable only with them, as the log keeps its order.
func (b backend) End(j index.Journal, sh *index.Shard) error {
	w := j.(*wset)
	if w.op != index.OpWrite && !w.wait {
		if len(w.muts) > 0 {
			w.mark(b.s.c.submitLazy(w))
		}
		sh.Unlock()
		w.release()
		return nil
	}
	bt, write := b.s.c.submit(w, w.op == index.OpWrite)
	w.mark(bt)
	sh.Unlock()
	w.release()
	return b.s.c.wait(bt, write)
}

// mark marks the entries w wrote with bt, which carries their write.
func (w *wset) mark(bt *batch) {
	for _, e := range w.marked {
		e.SetMark(bt.gen)
	}
}

// Writable implements index.Journal: writes fail at once while a failure
// is being retried, or for good on a read-only directory.
func (w *wset) Writable() error { return w.s.writable() }

// ReadBody implements index.Journal.
func (w *wset) ReadBody(key string, id store.ID) ([]byte, error) {
	return w.s.readBody(bMsgs, keyFor(key, id))
}

// ReadReplyBody implements index.Journal.
func (w *wset) ReadReplyBody(key string, id store.ID) ([]byte, error) {
	return w.s.readBody(bReplies, keyFor(key, id))
}

// PutMessage implements index.Journal.
func (w *wset) PutMessage(key string, e *index.Entry, body []byte) {
	m := e.Message()
	k := keyFor(key, m.ID)
	w.muts = append(w.muts, mut{bMsgs, k, encodeMsg(k, m.ContentType, m.DedupKey, m.ExpiresAt, e.DedupUntil(), body)})
	w.held = append(w.held, held{&e.Body, e.Hold(body)})
	w.marked = append(w.marked, e)
}

// DelMessage implements index.Journal.
func (w *wset) DelMessage(key string, e *index.Entry) {
	k := keyFor(key, e.MessageID())
	w.muts = append(w.muts, mut{bucket: bMsgs, key: k})
	if e.Pending() {
		w.muts = append(w.muts, mut{bucket: bPending, key: k})
	}
}

// PutPending implements index.Journal.
func (w *wset) PutPending(key string, e *index.Entry) {
	k := keyFor(key, e.MessageID())
	w.muts = append(w.muts, mut{bPending, k, encodePending(k)})
	w.marked = append(w.marked, e)
}

// PutSeen implements index.Journal.
func (w *wset) PutSeen(key, dedupKey string, until time.Time, id store.ID) {
	k := seenKeyFor(key, dedupKey)
	w.muts = append(w.muts, mut{bSeen, k, encodeSeen(k, until, id)})
}

// DelSeen implements index.Journal.
func (w *wset) DelSeen(key, dedupKey string) {
	w.muts = append(w.muts, mut{bucket: bSeen, key: seenKeyFor(key, dedupKey)})
}

// PutReply implements index.Journal.
func (w *wset) PutReply(key string, r *index.Reply, body []byte) {
	m := r.Message()
	k := keyFor(key, m.ID)
	w.muts = append(w.muts, mut{bReplies, k, encodeMsg(k, m.ContentType, "", m.ExpiresAt, time.Time{}, body)})
	w.held = append(w.held, held{&r.Body, r.Hold(body)})
}

// DelReply implements index.Journal.
func (w *wset) DelReply(key string, id store.ID) {
	w.muts = append(w.muts, mut{bucket: bReplies, key: keyFor(key, id)})
}

// Gave implements index.Journal: handing out a message whose last write
// is not durable yet waits for that write.
func (w *wset) Gave(key string, e *index.Entry) {
	if !w.s.c.durable(e.Mark()) {
		w.wait = true
	}
}

// Assigned implements index.Journal.
func (w *wset) Assigned(id store.ID) {
	if id.Compare(w.maxID) > 0 {
		w.maxID = id
	}
}
