package filestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/postern/postern/internal/store"
)

// The write-ahead log is two files of fixed size, wal-0.log and wal-1.log,
// used in turn. A commit is one record written in place into space the
// file already has and synced: no allocation and no change of size, so
// the sync has only data to flush. Where the file system allows, the
// record is written directly to the disk (O_DIRECT) with RWF_DSYNC, one
// system call that returns once it is durable; elsewhere it is written
// to the page cache and flushed with fdatasync. Up to a window of records
// (Options.SyncWindow) are written and synced at once, each acknowledged only once
// every record before it is durable. Records are applied to the database
// file in the background (checkpoints); a log file is reused once every
// record in it is in the database, and no record goes to the next file
// while one before it is still syncing.
//
// A log file starts with a header (one 4 KiB block): magic, generation,
// the sequence number of its first record and the window its records were
// written with, with a CRC-32C. Records follow, each aligned to 512 bytes:
// CRC-32C of the rest, payload length, sequence number, payload (one
// committed batch). At open, each file's chain of records with consecutive
// sequence numbers is read up to the first record that is torn (a write
// that was never acknowledged) or stale (left from the file's previous
// use). Records written with it may lie intact beyond it: those within
// the window after it were never acknowledged either (they waited for it)
// and are dropped; any intact record further on with a sequence number
// not yet in the database means damage, and opening fails. A file written
// by an older version, whose header has no window, had one record in
// flight at a time.

const (
	walMagic      = "PSTNWAL2" // header with the window
	walMagicV1    = "PSTNWAL1" // header without it: a window of one
	walHeaderSize = 4096
	walAlign      = 512
	walRecHeader  = 16
)

// DefaultWALSize is the size of each of the two log files.
const DefaultWALSize = 8 << 20

var errWALFull = errors.New("log file full")

type walFile struct {
	f        *os.File
	path     string
	size     int64
	gen      uint64
	firstSeq uint64
	lastSeq  uint64 // last record of this generation; firstSeq-1 when none
	window   uint64 // records written at once in this generation
	// direct is the file opened for direct writes, or nil (openDirect).
	direct *os.File
}

type wal struct {
	files [2]*walFile
	// window is Options.SyncWindow, written into each new generation's
	// header: how many records after a torn one recovery may drop.
	window uint32
	cur    int
	off    int64 // where the next record of files[cur] goes
	buf    []byte
	// direct is set while records are written directly (both files have
	// a direct handle, and no direct write was refused).
	direct atomic.Bool
	// records counts the records written since open (benchmarks report
	// operations per record).
	records atomic.Uint64
}

// walRecord is a record read back at open.
type walRecord struct {
	seq     uint64
	payload []byte
}

func walPath(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("wal-%d.log", i)) }

func alignUp(n int64) int64 { return (n + walAlign - 1) &^ (walAlign - 1) }

// openWAL opens (creating when missing) both log files and returns the
// records whose sequence numbers are above applied, in order.
func openWAL(dir string, size int64, applied uint64, readOnly bool) (*wal, []walRecord, error) {
	w := &wal{}
	var recs []walRecord
	for i := range w.files {
		wf, got, err := openWALFile(walPath(dir, i), size, applied, readOnly)
		if err != nil {
			w.close()
			return nil, nil, err
		}
		w.files[i] = wf
		recs = append(recs, got...)
	}
	w.direct.Store(w.files[0].direct != nil && w.files[1].direct != nil)
	slices.SortFunc(recs, func(a, b walRecord) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	for i, r := range recs {
		if r.seq != applied+1+uint64(i) {
			w.close()
			return nil, nil, logDamaged(filepath.Join(dir, "wal-*.log"), "record %d is missing (%s has everything up to %d)", applied+1+uint64(i), FileName, applied)
		}
	}
	return w, recs, nil
}

func openWALFile(path string, size int64, applied uint64, readOnly bool) (*walFile, []walRecord, error) {
	wf := &walFile{path: path}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if readOnly && errors.Is(err, os.ErrNotExist) {
		return wf, nil, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		if f, err = createWALFile(path, size); err != nil {
			return nil, nil, err
		}
		wf.f, wf.size, wf.direct = f, size, openDirect(path)
		return wf, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("file store: %w", err)
	}
	wf.f = f
	data, err := os.ReadFile(path)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("file store: reading %s: %w", path, err)
	}
	wf.size = int64(len(data))
	if wf.size < walHeaderSize+walAlign {
		f.Close()
		return nil, nil, logDamaged(path, "it is truncated to %d bytes", wf.size)
	}
	var chain []walRecord
	end := int64(walHeaderSize)
	wf.window = 1
	if gen, first, window, ok := parseWALHeader(data[:walHeaderSize]); ok {
		wf.gen, wf.firstSeq, wf.lastSeq, wf.window = gen, first, first-1, window
		for {
			// Sequence numbers follow on, except past a batch too large for
			// a record, which went straight into the database.
			seq, payload, n, ok := parseWALRecord(data, end)
			if !ok || seq <= wf.lastSeq || (seq != wf.lastSeq+1 && seq-1 > applied) {
				break
			}
			wf.lastSeq = seq
			if seq > applied {
				chain = append(chain, walRecord{seq, payload})
			}
			end += n
		}
	}
	// Past the chain lie a torn record that was never acknowledged, the
	// records written while it was syncing (within the window after it:
	// they waited for it, so none was acknowledged either), and records
	// left from this file's previous use, all in the database already. An
	// intact record the database lacks further on means the chain was cut
	// by damage.
	for off := end; off+walRecHeader <= wf.size; off += walAlign {
		seq, _, _, ok := parseWALRecord(data, off)
		if ok && seq > applied && seq > wf.lastSeq+wf.window {
			f.Close()
			return nil, nil, logDamaged(path, "the record at offset %d is unreadable and record %d after it would be lost", end, seq)
		}
	}
	if !readOnly {
		wf.direct = openDirect(path)
	}
	return wf, chain, nil
}

func createWALFile(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("file store: creating %s: %w", path, err)
	}
	if err := preallocate(f, size); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("file store: creating %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("file store: creating %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, fmt.Errorf("file store: creating %s: %w", path, err)
	}
	return f, nil
}

// parseWALHeader reads a log file's header: generation, first sequence
// number and window (1 for a header of the first version).
func parseWALHeader(h []byte) (gen, first, window uint64, ok bool) {
	switch string(h[:8]) {
	case walMagicV1:
		if binary.BigEndian.Uint32(h[24:]) != crc32.Checksum(h[:24], castagnoli) {
			return 0, 0, 0, false
		}
		return binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint64(h[16:]), 1, true
	case walMagic:
		window := uint64(binary.BigEndian.Uint32(h[24:]))
		if binary.BigEndian.Uint32(h[28:]) != crc32.Checksum(h[:28], castagnoli) || window == 0 {
			return 0, 0, 0, false
		}
		return binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint64(h[16:]), window, true
	}
	return 0, 0, 0, false
}

// parseWALRecord reads the record at off: its sequence number, payload and
// aligned length.
func parseWALRecord(data []byte, off int64) (seq uint64, payload []byte, n int64, ok bool) {
	if off+walRecHeader > int64(len(data)) {
		return 0, nil, 0, false
	}
	h := data[off:]
	crc := binary.BigEndian.Uint32(h)
	plen := int64(binary.BigEndian.Uint32(h[4:]))
	if crc == 0 && plen == 0 || off+walRecHeader+plen > int64(len(data)) {
		return 0, nil, 0, false
	}
	if crc32.Checksum(h[4:walRecHeader+plen], castagnoli) != crc {
		return 0, nil, 0, false
	}
	return binary.BigEndian.Uint64(h[8:]), h[walRecHeader : walRecHeader+plen], alignUp(walRecHeader + plen), true
}

// start begins a new generation, whose first record will be seq, in the
// file that was used least recently.
func (w *wal) start(seq uint64) error {
	i := 0
	if w.files[1].gen < w.files[0].gen {
		i = 1
	}
	return w.rotateTo(i, seq)
}

// rotateTo begins a new generation in file i. The header is synced before
// any record of the generation is written, so a torn header never hides
// acknowledged records.
func (w *wal) rotateTo(i int, seq uint64) error {
	wf := w.files[i]
	gen := max(w.files[0].gen, w.files[1].gen) + 1
	h := make([]byte, walHeaderSize)
	copy(h, walMagic)
	binary.BigEndian.PutUint64(h[8:], gen)
	binary.BigEndian.PutUint64(h[16:], seq)
	binary.BigEndian.PutUint32(h[24:], w.window)
	binary.BigEndian.PutUint32(h[28:], crc32.Checksum(h[:28], castagnoli))
	if _, err := wf.f.WriteAt(h, 0); err != nil {
		return err
	}
	if err := fdatasync(wf.f); err != nil {
		return err
	}
	wf.gen, wf.firstSeq, wf.lastSeq, wf.window = gen, seq, seq-1, uint64(w.window)
	w.cur, w.off = i, walHeaderSize
	return nil
}

// maxPayload is the largest batch a record can carry; larger ones go to
// the database directly.
func (w *wal) maxPayload() int {
	return int(min(w.files[0].size, w.files[1].size)-walHeaderSize)/2 - walRecHeader
}

// other is the file not in use.
func (w *wal) other() *walFile { return w.files[1-w.cur] }

// recordBuf returns room for the header of a record, to append its
// payload to and hand to write. The room is reused from record to record.
func (w *wal) recordBuf() []byte {
	if cap(w.buf) < walRecHeader {
		w.buf = make([]byte, 0, walAlign)
	}
	return w.buf[:walRecHeader]
}

// write writes the record seq, whose payload is rec[walRecHeader:] (rec
// comes from recordBuf, which write fills in and keeps for the next
// record), into the current file, for sync to make durable. While records
// are written directly, it only places the record: it returns it, in
// memory aligned for the direct write, for sync to write. It returns
// errWALFull when the current file has no room; the caller rotates once
// the other file is in the database.
func (w *wal) write(seq uint64, rec []byte) ([]byte, error) {
	wf := w.files[w.cur]
	plen := len(rec) - walRecHeader
	n := alignUp(int64(len(rec)))
	if w.off+n > wf.size {
		return nil, errWALFull
	}
	// Zeros up to the alignment: the space after a record is never left
	// with what an earlier one had there.
	b := append(rec, make([]byte, int(n)-len(rec))...)
	w.buf = b[:0]
	binary.BigEndian.PutUint32(b[4:], uint32(plen))
	binary.BigEndian.PutUint64(b[8:], seq)
	binary.BigEndian.PutUint32(b, crc32.Checksum(b[4:walRecHeader+plen], castagnoli))
	var placed []byte
	if w.direct.Load() {
		placed = alignedBuf(len(b))
		copy(placed, b)
	} else if _, err := wf.f.WriteAt(b, w.off); err != nil {
		return nil, err
	}
	w.off += n
	wf.lastSeq = seq
	w.records.Add(1)
	return placed, nil
}

// sync makes the record at off of file i durable: a record write placed
// (rec, from write) is written now, directly and durably in one call;
// otherwise what was written to the file is flushed with fdatasync.
// Several syncs may run at once, with writes.
func (w *wal) sync(i int, off int64, rec []byte) error {
	wf := w.files[i]
	if rec != nil {
		defer freeAligned(rec)
		err := directWrite(wf.direct, rec, off)
		if err != errDirectUnsupported {
			return err
		}
		// The file system refused the direct write (nothing was
		// written): write through the page cache from now on.
		w.direct.Store(false)
		if _, err := wf.f.WriteAt(rec, off); err != nil {
			return err
		}
	}
	return fdatasync(wf.f)
}

// directWrite is writeDSync, replaced by tests.
var directWrite = writeDSync

// errDirectUnsupported is writeDSync's answer when the direct write itself
// is refused.
var errDirectUnsupported = errors.New("direct write not supported")

// alignedBufs keeps buffers for direct writes, aligned to directAlign.
var alignedBufs sync.Pool

// alignedBuf returns n bytes aligned to directAlign.
func alignedBuf(n int) []byte {
	if p, ok := alignedBufs.Get().(*[]byte); ok && cap(*p) >= n {
		return (*p)[:n]
	}
	size := max(n, 16<<10)
	raw := make([]byte, size+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&raw[0]))%directAlign)) % directAlign
	return raw[skip : skip+n : skip+size]
}

// freeAligned returns b, from alignedBuf, for reuse.
func freeAligned(b []byte) { alignedBufs.Put(&b) }

// truncate sets the log back to offset off of file i, where record seq
// (whose write failed) began, and makes a best effort to erase what was
// written from there on, so that the disk does not keep writes their
// callers were told had failed. The next record goes to off either way.
func (w *wal) truncate(i int, off int64, seq uint64) {
	if i != w.cur {
		return // the failure came before the record's file was started
	}
	end := min(max(w.off, off+walRecHeader), w.files[i].size)
	zeros := make([]byte, max(min(end-off, 1<<20), 0))
	for o := off; o < end; o += int64(len(zeros)) {
		w.files[i].f.WriteAt(zeros[:min(int64(len(zeros)), end-o)], o)
	}
	w.off = off
	w.files[i].lastSeq = seq - 1
}

// used is how full the current file is, from 0 to 1.
func (w *wal) used() float64 { return float64(w.off) / float64(w.files[w.cur].size) }

func (w *wal) close() error {
	var errs []error
	for _, wf := range w.files {
		if wf != nil && wf.f != nil {
			errs = append(errs, wf.f.Close())
		}
		if wf != nil && wf.direct != nil {
			errs = append(errs, wf.direct.Close())
		}
	}
	return errors.Join(errs...)
}

// appendBatch appends the payload of a batch's record to p: its largest
// id, then its changes (bucket, key, value length plus one or zero for a
// delete, value).
func appendBatch(p []byte, b *batch) []byte {
	n := 16 + binary.MaxVarintLen64
	for _, m := range b.muts {
		n += 1 + 2*binary.MaxVarintLen64 + len(m.key) + len(m.val)
	}
	p = slices.Grow(p, n)
	p = binary.BigEndian.AppendUint64(p, b.maxID.MS)
	p = binary.BigEndian.AppendUint64(p, b.maxID.Seq)
	p = binary.AppendUvarint(p, uint64(len(b.muts)))
	for _, m := range b.muts {
		p = append(p, m.bucket)
		p = binary.AppendUvarint(p, uint64(len(m.key)))
		p = append(p, m.key...)
		if m.val == nil {
			p = binary.AppendUvarint(p, 0)
		} else {
			p = binary.AppendUvarint(p, uint64(len(m.val))+1)
			p = append(p, m.val...)
		}
	}
	return p
}

var errBadPayload = errors.New("malformed batch")

func decodeBatch(p []byte) (store.ID, []mut, error) {
	if len(p) < 16 {
		return store.ID{}, nil, errBadPayload
	}
	id := store.ID{MS: binary.BigEndian.Uint64(p), Seq: binary.BigEndian.Uint64(p[8:])}
	p = p[16:]
	count, w := binary.Uvarint(p)
	if w <= 0 || count > uint64(len(p)) {
		return store.ID{}, nil, errBadPayload
	}
	p = p[w:]
	muts := make([]mut, 0, count)
	for range count {
		if len(p) < 1 || p[0] >= numBuckets {
			return store.ID{}, nil, errBadPayload
		}
		m := mut{bucket: p[0]}
		p = p[1:]
		kl, w := binary.Uvarint(p)
		if w <= 0 || uint64(len(p)-w) < kl {
			return store.ID{}, nil, errBadPayload
		}
		m.key = p[w : w+int(kl)]
		p = p[w+int(kl):]
		vl, w := binary.Uvarint(p)
		if w <= 0 || (vl > 0 && uint64(len(p)-w) < vl-1) {
			return store.ID{}, nil, errBadPayload
		}
		p = p[w:]
		if vl > 0 {
			m.val = p[: vl-1 : vl-1]
			p = p[vl-1:]
		}
		muts = append(muts, m)
	}
	if len(p) != 0 {
		return store.ID{}, nil, errBadPayload
	}
	return id, muts, nil
}
