package filestore

import (
	"encoding/binary"
	"fmt"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/index"
)

// load rebuilds the index from the database file overlaid with ov (the
// changes of logged batches not yet in it, keyed by bucket and key; see
// checkpointer.overlay), never lowering an id counter below ovLast or
// any id the file names. Bodies that come from ov are kept in memory;
// load returns them, to be released when their batches are in the
// database. The caller has the store to itself: at open, or holding every
// shard lock and the checkpointer's run lock.
//
// A file whose pages cannot be read (a fault in the mapping, a bbolt
// panic on a damaged page) is reported as damaged, not a crash.
func (s *Store) load(ov map[string][]byte, ovLast store.ID) (hs []held, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = s.damaged("reading it failed: %v", r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	l := s.Load()
	l.Floor(ovLast)
	rd := &reader{s: s, ov: ov, l: l}
	if err := s.db.View(rd.read); err != nil {
		return nil, err
	}
	l.Done()
	return rd.held, nil
}

// reader reads the database file into the index, in the order the index
// needs: messages, then their pending marks, remembered dedup keys and
// replies.
type reader struct {
	s    *Store
	ov   map[string][]byte
	l    *index.Loader
	bk   [numBuckets]*bolt.Bucket
	held []held
}

func (rd *reader) read(tx *bolt.Tx) error {
	s := rd.s
	if need, have := tx.Size(), fileSize(s.path); have < need {
		return s.damaged("it is truncated: %d bytes, its header says %d", have, need)
	}
	for i, name := range bucketNames {
		if rd.bk[i] = tx.Bucket(name); rd.bk[i] == nil {
			return s.damaged("bucket %s is missing", name)
		}
	}
	for _, step := range []func() error{rd.meta, rd.messages, rd.pendingMarks, rd.seenKeys, rd.replies} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// each visits the records of bucket b as ov changes them: the file's,
// then those only ov has. fromOv says the value is not the one in the
// file.
func (rd *reader) each(b uint8, fn func(k, v []byte, fromOv bool) error) error {
	err := rd.bk[b].ForEach(func(k, v []byte) error {
		if len(rd.ov) > 0 {
			if val, ok := rd.ov[string([]byte{b})+string(k)]; ok {
				if val == nil {
					return nil
				}
				return fn(k, val, true)
			}
		}
		return fn(k, v, false)
	})
	if err != nil {
		return err
	}
	for key, val := range rd.ov {
		if key[0] == b && val != nil && rd.bk[b].Get([]byte(key[1:])) == nil {
			if err := fn([]byte(key[1:]), val, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// meta checks the layout version and floors ids at the largest ever
// assigned.
func (rd *reader) meta() error {
	s, bk := rd.s, rd.bk[bMeta]
	if v := bk.Get(metaVersion); string(v) != formatVersion {
		return fmt.Errorf("file store: %s has layout version %q, this postern reads %q", s.path, v, formatVersion)
	}
	if v := bk.Get(metaLastID); v != nil {
		if len(v) != 16 {
			return s.damaged("meta record lastid is malformed")
		}
		rd.l.Floor(store.ID{MS: binary.BigEndian.Uint64(v), Seq: binary.BigEndian.Uint64(v[8:])})
	}
	return nil
}

// messages loads the message records. The file holds a queue's records
// in id order; those from ov may come after a queue's others.
func (rd *reader) messages() error {
	return rd.each(bMsgs, func(k, v []byte, fromOv bool) error {
		key, id, r, err := rd.record(k, v, "message")
		if err != nil {
			return err
		}
		m := store.Message{ID: id, ContentType: r.ct, DedupKey: r.dedupKey, ExpiresAt: r.expires}
		e, inOrder := rd.l.Message(key, m, r.dedupUntil)
		if !inOrder && !fromOv {
			return rd.s.damaged("messages of queue %q are out of order", key)
		}
		if fromOv {
			rd.held = append(rd.held, held{&e.Body, e.Hold(r.body)})
		}
		return nil
	})
}

// record decodes the message record (of a message, or a reply) k, v.
func (rd *reader) record(k, v []byte, what string) (string, store.ID, record, error) {
	key, id, ok := splitIDKey(k)
	if !ok {
		return "", id, record{}, rd.s.damaged("%s key %x is malformed", what, k)
	}
	r, err := decodeMsg(k, v)
	if err != nil {
		return "", id, record{}, rd.s.damaged("%s %s of queue %q: %v", what, id, key, err)
	}
	return key, id, r, nil
}

// pendingMarks marks the pending messages.
func (rd *reader) pendingMarks() error {
	return rd.each(bPending, func(k, v []byte, _ bool) error {
		key, id, ok := splitIDKey(k)
		if !ok {
			return rd.s.damaged("pending key %x is malformed", k)
		}
		if err := checkPending(k, v); err != nil {
			return rd.s.damaged("pending mark for message %s of queue %q: %v", id, key, err)
		}
		if !rd.l.Pending(key, id) {
			return rd.s.damaged("pending mark for message %s of queue %q, which is missing", id, key)
		}
		return nil
	})
}

// seenKeys loads the remembered dedup keys of handed-out messages.
func (rd *reader) seenKeys() error {
	return rd.each(bSeen, func(k, v []byte, _ bool) error {
		key, dk, ok := splitKey(k)
		if !ok {
			return rd.s.damaged("dedup key record %x is malformed", k)
		}
		until, id, err := decodeSeen(k, v)
		if err != nil {
			return rd.s.damaged("dedup key %q of queue %q: %v", dk, key, err)
		}
		rd.l.Seen(key, string(dk), until, id)
		return nil
	})
}

// replies loads the stored replies.
func (rd *reader) replies() error {
	return rd.each(bReplies, func(k, v []byte, fromOv bool) error {
		key, id, r, err := rd.record(k, v, "reply")
		if err != nil {
			return err
		}
		rp := rd.l.Reply(key, store.Message{ID: id, ContentType: r.ct, ExpiresAt: r.expires})
		if fromOv {
			rd.held = append(rd.held, held{&rp.Body, rp.Hold(r.body)})
		}
		return nil
	})
}
