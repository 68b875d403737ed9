package filestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/internal/store"
)

// Buckets of the database file.
const (
	bMsgs    uint8 = iota // queue key + id -> message record
	bPending              // queue key + id -> empty: the message is pending
	bSeen                 // queue key + dedup key -> seen record: remembered until
	bReplies              // queue key + id -> message record of the reply
	bMeta                 // "version", "lastid", "applied"
	numBuckets
)

var bucketNames = [numBuckets][]byte{[]byte("msgs"), []byte("pending"), []byte("seen"), []byte("replies"), []byte("meta")}

var (
	metaVersion = []byte("version")
	metaLastID  = []byte("lastid")
	metaApplied = []byte("applied") // sequence number of the last logged batch applied
)

// formatVersion is the layout version written to meta; a file of another
// version is refused.
const formatVersion = "1"

// recVersion starts every record.
const recVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// keyFor is the record key of message id of queue key: the key's length as
// a uvarint, the key, then the id as two big-endian uint64s, so that the
// records of one queue sort by id.
func keyFor(key string, id store.ID) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(key)+16)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	b = binary.BigEndian.AppendUint64(b, id.MS)
	return binary.BigEndian.AppendUint64(b, id.Seq)
}

// seenKeyFor is the record key of a remembered dedup key.
func seenKeyFor(key, dedupKey string) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(key)+len(dedupKey))
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return append(b, dedupKey...)
}

// splitKey splits a record key into queue key and the rest.
func splitKey(k []byte) (string, []byte, bool) {
	n, w := uvarint(k)
	if w <= 0 || uint64(len(k)-w) < n {
		return "", nil, false
	}
	return string(k[w : w+int(n)]), k[w+int(n):], true
}

func splitIDKey(k []byte) (string, store.ID, bool) {
	key, rest, ok := splitKey(k)
	if !ok || len(rest) != 16 {
		return "", store.ID{}, false
	}
	return key, store.ID{MS: binary.BigEndian.Uint64(rest), Seq: binary.BigEndian.Uint64(rest[8:])}, true
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// A message record is: version (1 byte), CRC-32C of the record's key and
// the rest of the value (4), expiry and dedup-until in Unix nanoseconds
// (8 + 8, zero for none), content type and dedup key each as a uvarint
// length and bytes, then the body. The checksum covers the key, so that a
// damaged key is caught too, not read as another queue's message.
const recHeader = 1 + 4 + 16

// checksum is the CRC-32C of k followed by v.
func checksum(k, v []byte) uint32 {
	return crc32.Update(crc32.Checksum(k, castagnoli), castagnoli, v)
}

func encodeMsg(k []byte, ct, dedupKey string, expires, dedupUntil time.Time, body []byte) []byte {
	v := make([]byte, recHeader, recHeader+2*binary.MaxVarintLen64+len(ct)+len(dedupKey)+len(body))
	v[0] = recVersion
	binary.BigEndian.PutUint64(v[5:], uint64(nanos(expires)))
	binary.BigEndian.PutUint64(v[13:], uint64(nanos(dedupUntil)))
	v = binary.AppendUvarint(v, uint64(len(ct)))
	v = append(v, ct...)
	v = binary.AppendUvarint(v, uint64(len(dedupKey)))
	v = append(v, dedupKey...)
	v = append(v, body...)
	binary.BigEndian.PutUint32(v[1:], checksum(k, v[5:]))
	return v
}

// record is a decoded message record; body aliases the value it came from.
type record struct {
	ct, dedupKey        string
	expires, dedupUntil time.Time
	body                []byte
}

var errBadRecord = errors.New("record fails its checksum or is malformed")

func decodeMsg(k, v []byte) (record, error) {
	if len(v) < recHeader || v[0] != recVersion || binary.BigEndian.Uint32(v[1:]) != checksum(k, v[5:]) {
		return record{}, errBadRecord
	}
	r := record{
		expires:    fromNanos(int64(binary.BigEndian.Uint64(v[5:]))),
		dedupUntil: fromNanos(int64(binary.BigEndian.Uint64(v[13:]))),
	}
	rest := v[recHeader:]
	var ok bool
	if r.ct, rest, ok = lenString(rest); !ok {
		return record{}, errBadRecord
	}
	if r.dedupKey, rest, ok = lenString(rest); !ok {
		return record{}, errBadRecord
	}
	r.body = rest
	return r, nil
}

// uvarint reads a uvarint written in as few bytes as it takes, as
// binary.AppendUvarint writes them; w <= 0 means it is not one.
func uvarint(b []byte) (uint64, int) {
	n, w := binary.Uvarint(b)
	if w > 1 && b[w-1] == 0 {
		return 0, -1 // a longer form than needed: only 0 is written 0x00
	}
	return n, w
}

// skipLen skips a uvarint length and as many bytes.
func skipLen(b []byte) ([]byte, bool) {
	n, w := uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return nil, false
	}
	return b[w+int(n):], true
}

// msgBody checks the message record k, v as decodeMsg does and returns
// its body (aliasing v), without decoding the rest.
func msgBody(k, v []byte) ([]byte, error) {
	if len(v) < recHeader || v[0] != recVersion || binary.BigEndian.Uint32(v[1:]) != checksum(k, v[5:]) {
		return nil, errBadRecord
	}
	rest, ok := skipLen(v[recHeader:]) // content type
	if ok {
		rest, ok = skipLen(rest) // dedup key
	}
	if !ok {
		return nil, errBadRecord
	}
	return rest, nil
}

func lenString(b []byte) (string, []byte, bool) {
	n, w := uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return "", nil, false
	}
	return string(b[w : w+int(n)]), b[w+int(n):], true
}

// A seen record is: version, CRC-32C of the key and the rest, until in
// Unix nanoseconds, and the id of the delivered message that carried the
// key (two big-endian uint64s; records written before ids were kept end
// after until).
func encodeSeen(k []byte, until time.Time, id store.ID) []byte {
	v := make([]byte, 29)
	v[0] = recVersion
	binary.BigEndian.PutUint64(v[5:], uint64(nanos(until)))
	binary.BigEndian.PutUint64(v[13:], id.MS)
	binary.BigEndian.PutUint64(v[21:], id.Seq)
	binary.BigEndian.PutUint32(v[1:], checksum(k, v[5:]))
	return v
}

func decodeSeen(k, v []byte) (time.Time, store.ID, error) {
	if len(v) != 13 && len(v) != 29 || v[0] != recVersion || binary.BigEndian.Uint32(v[1:]) != checksum(k, v[5:]) {
		return time.Time{}, store.ID{}, errBadRecord
	}
	var id store.ID
	if len(v) == 29 {
		id = store.ID{MS: binary.BigEndian.Uint64(v[13:]), Seq: binary.BigEndian.Uint64(v[21:])}
	}
	return fromNanos(int64(binary.BigEndian.Uint64(v[5:]))), id, nil
}

// A pending mark is: version, CRC-32C of the key.
func encodePending(k []byte) []byte {
	v := []byte{recVersion, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(v[1:], checksum(k, nil))
	return v
}

func checkPending(k, v []byte) error {
	if len(v) != 5 || v[0] != recVersion || binary.BigEndian.Uint32(v[1:]) != checksum(k, nil) {
		return errBadRecord
	}
	return nil
}

func encodeID(id store.ID) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16), id.MS)
	return binary.BigEndian.AppendUint64(b, id.Seq)
}

// damaged is the error for a database file that cannot be trusted.
func (s *Store) damaged(format string, args ...any) error {
	return fmt.Errorf("file store: %s is damaged: %s. Nothing was changed. Restore the data directory from a backup, or move it aside to start empty (README, \"Data directory\")",
		s.path, fmt.Sprintf(format, args...))
}

// logDamaged is the error for a write-ahead log file that cannot be
// trusted.
func logDamaged(path, format string, args ...any) error {
	return fmt.Errorf("file store: %s is damaged: %s. Nothing was changed. Restore the data directory from a backup, or move wal-0.log and wal-1.log aside to start from %s alone, losing the writes logged since its last checkpoint (README, \"Data directory\")",
		path, fmt.Sprintf(format, args...), FileName)
}

// openDB opens the database file, creating it when the directory has none.
// A new file is made under a temporary name and renamed into place once
// initialized, so a file that exists but is empty or short is never taken
// for a new one: it is reported as truncated.
func (s *Store) openDB() (err error) {
	fi, err := os.Stat(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist) && s.readOnly:
		return fmt.Errorf("file store: data directory %s is read-only and holds no %s", s.dir, FileName)
	case errors.Is(err, os.ErrNotExist):
		if err := s.create(); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("file store: %w", err)
	case fi.Size() < 4*int64(os.Getpagesize()):
		return s.damaged("it is truncated to %d bytes", fi.Size())
	}
	if need, ok := boltSize(s.path); ok && fi != nil && fi.Size() < need {
		return s.damaged("it is truncated: %d bytes, its header says %d", fi.Size(), need)
	}
	defer func() {
		if r := recover(); r != nil {
			err = s.damaged("opening it failed: %v", r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	bo := boltOptions()
	bo.ReadOnly = s.readOnly
	db, err := bolt.Open(s.path, 0o600, bo)
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return fmt.Errorf("file store: %s is locked by another process", s.path)
	case errors.Is(err, bolt.ErrInvalid), errors.Is(err, bolt.ErrChecksum), errors.Is(err, bolt.ErrVersionMismatch):
		return s.damaged("%v", err)
	case err != nil:
		return fmt.Errorf("file store: opening %s: %w", s.path, err)
	}
	s.db = db
	return nil
}

// boltSize reads the newer valid header of a bbolt file and returns the
// size its pages need, to tell a truncated file before bbolt touches it.
// A header (meta page) follows a 16-byte page header: magic, version, page
// size, flags (4 bytes each), root bucket (16), freelist page, high-water
// page, transaction id and an FNV-64a checksum of what precedes it (8
// each), in the machine's byte order.
func boltSize(path string) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	buf := make([]byte, 2*65536)
	n, _ := io.ReadFull(f, buf)
	buf = buf[:n]
	var need int64
	var txid uint64
	found := false
	meta := func(off int) {
		if off+16+64 > len(buf) {
			return
		}
		m := buf[off+16 : off+16+64]
		le := binary.LittleEndian
		if le.Uint32(m) != 0xED0CDAED {
			return
		}
		h := fnv.New64a()
		h.Write(m[:56])
		if h.Sum64() != le.Uint64(m[56:]) {
			return
		}
		if tx := le.Uint64(m[48:]); !found || tx > txid {
			found, txid = true, tx
			need = int64(le.Uint64(m[40:])) * int64(le.Uint32(m[8:]))
		}
	}
	meta(0)
	if found || len(buf) >= 16+64 {
		if ps := int(binary.LittleEndian.Uint32(buf[16+8:])); ps > 0 && ps <= 65536 {
			meta(ps)
		}
	}
	return need, found
}

func boltOptions() *bolt.Options {
	return &bolt.Options{
		Timeout:         time.Second, // the LOCK file is the real guard
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: 64 << 20,
	}
}

// create makes a fresh database file.
func (s *Store) create() error {
	tmp := s.path + ".new"
	os.Remove(tmp)
	db, err := bolt.Open(tmp, 0o600, boltOptions())
	if err != nil {
		return fmt.Errorf("file store: creating %s: %w", s.path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range bucketNames {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketNames[bMeta]).Put(metaVersion, []byte(formatVersion))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("file store: creating %s: %w", s.path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// apply writes logged batches to the database as one synced transaction,
// recording applied as the last batch applied.
func (s *Store) apply(bs []*batch, applied uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		var bk [numBuckets]*bolt.Bucket
		for i, name := range bucketNames {
			bk[i] = tx.Bucket(name)
			// Records of one queue arrive in key order: fill pages up.
			bk[i].FillPercent = 0.9
		}
		var last store.ID
		if v := bk[bMeta].Get(metaLastID); len(v) == 16 {
			last = store.ID{MS: binary.BigEndian.Uint64(v), Seq: binary.BigEndian.Uint64(v[8:])}
		}
		for _, b := range bs {
			if b.maxID.Compare(last) > 0 {
				last = b.maxID
			}
		}
		for _, m := range collapse(bs) {
			var err error
			if m.val == nil {
				err = bk[m.bucket].Delete(m.key)
			} else {
				err = bk[m.bucket].Put(m.key, m.val)
			}
			if err != nil {
				return err
			}
		}
		if err := bk[bMeta].Put(metaLastID, encodeID(last)); err != nil {
			return err
		}
		return bk[bMeta].Put(metaApplied, binary.BigEndian.AppendUint64(nil, applied))
	})
}

// collapse reduces the changes of bs to the last one of each record, in
// key order. Applying them is the same as applying every change in turn,
// since records are independent, but a message consumed before its
// checkpoint costs the database a lookup instead of an insert and a
// delete, and the tree is walked in order.
func collapse(bs []*batch) []mut {
	n := 0
	for _, b := range bs {
		n += len(b.muts)
	}
	all := make([]mut, 0, n)
	for _, b := range bs {
		all = append(all, b.muts...)
	}
	// A stable sort keeps the changes of one record in the order they
	// were made: the last of each run is the one that counts.
	slices.SortStableFunc(all, func(a, b mut) int {
		if a.bucket != b.bucket {
			return int(a.bucket) - int(b.bucket)
		}
		return bytes.Compare(a.key, b.key)
	})
	out := all[:0]
	for i, m := range all {
		if i+1 < len(all) && all[i+1].bucket == m.bucket && bytes.Equal(all[i+1].key, m.key) {
			continue
		}
		out = append(out, m)
	}
	return out
}

// appliedSeq reads the sequence number of the last batch in the database.
func (s *Store) appliedSeq() (uint64, error) {
	var seq uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNames[bMeta])
		if b == nil {
			return s.damaged("bucket meta is missing")
		}
		if v := b.Get(metaApplied); v != nil {
			if len(v) != 8 {
				return s.damaged("meta record applied is malformed")
			}
			seq = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return seq, err
}

// readBody reads the body of message record k of bucket from the file.
func (s *Store) readBody(bucket uint8, k []byte) ([]byte, error) {
	var body []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketNames[bucket]).Get(k)
		if v == nil {
			return fmt.Errorf("file store: %s lacks record %x of %s: %w", s.path, k, bucketNames[bucket], store.ErrUnavailable)
		}
		b, err := msgBody(k, v)
		if err != nil {
			return fmt.Errorf("file store: %s: record %x of %s is damaged: %w", s.path, k, bucketNames[bucket], store.ErrUnavailable)
		}
		body = append([]byte(nil), b...)
		return nil
	})
	return body, err
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// lockPath is the lock file of dir.
func lockPath(dir string) string { return filepath.Join(dir, LockName) }
