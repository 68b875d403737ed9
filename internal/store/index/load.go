package index

import (
	"time"

	"github.com/postern/postern/internal/store"
)

// Loader rebuilds an index from an engine's records, which come grouped
// by queue and in id order within a group, except for some the engine
// knows to be out of order (Message reports them; Done sorts them). The
// caller has the index to itself: before Start, or holding every shard
// lock (LockAll). A load keeps the histories and never lowers an id
// counter.
type Loader struct {
	x        *Index
	last     store.ID
	unsorted map[*queue]bool
	// the queue of the last message, as records of a queue come together
	q    *queue
	qkey string
}

// Load empties the index (its histories apart) and returns a Loader to
// fill it again.
func (x *Index) Load() *Loader {
	x.reset()
	return &Loader{x: x, unsorted: make(map[*queue]bool)}
}

// Floor makes every id assigned from now on come after id (an id the
// engine's records name, such as the largest ever assigned).
func (l *Loader) Floor(id store.ID) {
	if id.Compare(l.last) > 0 {
		l.last = id
	}
}

func (l *Loader) queue(key string) *queue {
	if l.q != nil && key == l.qkey {
		return l.q
	}
	sh := l.x.shard(key)
	q := sh.queues[key]
	if q == nil {
		q = &queue{}
		sh.queues[key] = q
		l.x.queues.Add(1)
	}
	l.q, l.qkey = q, key
	return q
}

// Message adds message m (its body not included) of queue key, whose
// dedup key is remembered until dedupUntil once it is handed out, and
// returns its entry. inOrder is false when m does not come after every
// message of its queue loaded so far: the queue is sorted by Done.
func (l *Loader) Message(key string, m store.Message, dedupUntil time.Time) (e *Entry, inOrder bool) {
	q := l.queue(key)
	inOrder = true
	if last, ok := q.Last(); ok && last.msg.ID.Compare(m.ID) >= 0 {
		inOrder = false
		l.unsorted[q] = true
	}
	m.Body = nil
	e = &Entry{msg: m, dedupUntil: nanoOf(dedupUntil)}
	q.Push(e)
	l.x.messages.Add(1)
	l.Floor(m.ID)
	return e, inOrder
}

// Pending marks message id of queue key pending; it reports false when
// no such message was loaded. Call it after every Message.
func (l *Loader) Pending(key string, id store.ID) bool {
	l.sortQueues()
	q := l.x.shard(key).queues[key]
	if q == nil {
		return false
	}
	i, found := q.Find(id)
	if found {
		q.Live()[i].state = pending
	}
	return found
}

// Seen remembers dedup key dk of delivered message id of queue key until
// then.
func (l *Loader) Seen(key, dk string, until time.Time, id store.ID) {
	q := l.queue(key)
	if q.seen == nil {
		q.seen = make(map[string]seen)
	}
	q.nseen++
	q.seen[dk] = seen{until: until, id: id, n: q.nseen}
}

// Reply adds reply m (its body not included) to message m.ID of queue key
// and returns it.
func (l *Loader) Reply(key string, m store.Message) *Reply {
	m.Body = nil
	r := &Reply{msg: m}
	l.x.shard(key).replies[replyKey{key, m.ID}] = r
	l.Floor(m.ID)
	return r
}

// sortQueues sorts the queues that got messages out of order.
func (l *Loader) sortQueues() {
	for q := range l.unsorted {
		q.Sort()
		delete(l.unsorted, q)
	}
}

// Done finishes the load: queued messages own their dedup keys, and every
// shard's id counter starts after the largest id loaded or floored.
func (l *Loader) Done() {
	l.sortQueues()
	x := l.x
	for i := range x.shards {
		sh := &x.shards[i]
		for _, q := range sh.queues {
			for _, e := range q.Live() {
				if k := e.msg.DedupKey; k != "" && e.state == queued {
					q.setQueued(k, e)
				}
			}
		}
		if l.last.Compare(sh.lastID) > 0 {
			sh.lastID = l.last
		}
	}
	x.hist.Floor(l.last)
}
