package index

import (
	"errors"
	"time"

	"github.com/postern/postern/internal/store"
)

// Op says what an operation is, for Backend.Begin.
type Op int

const (
	// OpWrite is an operation whose answer may rest on every change made
	// before it: a durable engine answers it once those are durable.
	OpWrite Op = iota
	// OpQuiet is an operation whose answer rests only on its own changes
	// and on what it hands out (Journal.Gave): taking under a lease,
	// settling a lease.
	OpQuiet
	// OpSweep removes expired data in the background.
	OpSweep
)

// Backend is what an engine adds to the index: where message bodies live
// once they leave memory, and how changes become durable.
type Backend interface {
	// Begin returns the journal of one operation of kind op, before the
	// operation locks its shard.
	Begin(op Op) Journal
	// End ends the operation that used j, called with sh still locked:
	// End must unlock sh, and may then wait until j's changes are
	// durable. An error replaces the operation's result.
	End(j Journal, sh *Shard) error
}

// Journal is told every change one operation makes, in order, under the
// shard lock, so that a durable engine can record them. It decides where
// a new body is kept: in its Entry or Reply for good (Body.Keep), or there
// until the engine holds it elsewhere (Body.Hold, Body.Drop).
type Journal interface {
	// Writable is asked before the operation's first change; an error
	// ends the operation with the index unchanged.
	Writable() error
	// ReadBody returns the body of message id of queue key, for an entry
	// whose body is no longer kept in memory.
	ReadBody(key string, id store.ID) ([]byte, error)
	// ReadReplyBody is ReadBody for the reply to id.
	ReadReplyBody(key string, id store.ID) ([]byte, error)
	// PutMessage: e is new, or its content, expiry or dedup window
	// changed, and body is its body.
	PutMessage(key string, e *Entry, body []byte)
	// DelMessage: e left its queue (with its pending mark, if any).
	DelMessage(key string, e *Entry)
	// PutPending: e became pending.
	PutPending(key string, e *Entry)
	// PutSeen: the dedup key of delivered message id is remembered until
	// then.
	PutSeen(key, dedupKey string, until time.Time, id store.ID)
	// DelSeen: a remembered dedup key is forgotten.
	DelSeen(key, dedupKey string)
	// PutReply: r was stored.
	PutReply(key string, r *Reply, body []byte)
	// DelReply: the reply to id was taken or expired.
	DelReply(key string, id store.ID)
	// Assigned: a message got id, above every id assigned before.
	Assigned(id store.ID)
	// Gave: the operation hands e out (under a lease, or a pending message
	// again); its answer rests on e's last change being durable.
	Gave(key string, e *Entry)
}

// Memory is the Backend of an engine that keeps everything in memory and
// nothing anywhere else: every body stays in its entry, and no change is
// recorded.
type Memory struct{}

var _ Backend = Memory{}

// Begin implements Backend.
func (Memory) Begin(Op) Journal { return discard{} }

// End implements Backend.
func (Memory) End(_ Journal, sh *Shard) error {
	sh.Unlock()
	return nil
}

// discard is the Journal that records nothing and keeps every body in
// memory.
type discard struct{}

var errNoBody = errors.New("index: a body kept in memory is missing")

func (discard) Writable() error                                { return nil }
func (discard) ReadBody(string, store.ID) ([]byte, error)      { return nil, errNoBody }
func (discard) ReadReplyBody(string, store.ID) ([]byte, error) { return nil, errNoBody }
func (discard) PutMessage(_ string, e *Entry, body []byte)     { e.Keep(body) }
func (discard) DelMessage(string, *Entry)                      {}
func (discard) PutPending(string, *Entry)                      {}
func (discard) PutSeen(string, string, time.Time, store.ID)    {}
func (discard) DelSeen(string, string)                         {}
func (discard) PutReply(_ string, r *Reply, body []byte)       { r.Keep(body) }
func (discard) DelReply(string, store.ID)                      {}
func (discard) Assigned(store.ID)                              {}
func (discard) Gave(string, *Entry)                            {}
