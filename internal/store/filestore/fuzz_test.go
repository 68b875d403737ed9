package filestore

import (
	"bytes"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
)

// The decoders read what is on disk, which damage can make anything: they
// must refuse garbage without panicking, and read back what was written.

func FuzzDecodeMsg(f *testing.F) {
	f.Add(encodeMsg("text/plain", "k", time.Unix(0, 5), time.Unix(0, 9), []byte("body")))
	f.Add(encodeMsg("", "", time.Time{}, time.Time{}, nil))
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := decodeMsg(v)
		if err != nil {
			return
		}
		again := encodeMsg(r.ct, r.dedupKey, r.expires, r.dedupUntil, r.body)
		if !bytes.Equal(again, v) {
			t.Fatalf("decoded %x and encoded it back as %x", v, again)
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	b := &batch{maxID: store.ID{MS: 7, Seq: 1}, muts: []mut{
		{bucket: bMsgs, key: keyFor("t/x", store.ID{MS: 7, Seq: 1}), val: []byte("v")},
		{bucket: bPending, key: keyFor("t/x", store.ID{MS: 7}), val: []byte{}},
		{bucket: bSeen, key: seenKeyFor("t/x", "k")},
	}}
	f.Add(encodeBatch(b))
	f.Add(encodeBatch(&batch{}))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, p []byte) {
		id, muts, err := decodeBatch(p)
		if err != nil {
			return
		}
		again := encodeBatch(&batch{maxID: id, muts: muts})
		if !bytes.Equal(again, p) {
			t.Fatalf("decoded %x and encoded it back as %x", p, again)
		}
	})
}

func FuzzParseWALRecord(f *testing.F) {
	f.Add([]byte{}, int64(0))
	f.Add(make([]byte, 600), int64(0))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 1}, int64(0))
	f.Fuzz(func(t *testing.T, data []byte, off int64) {
		if off < 0 || off > int64(len(data)) {
			return
		}
		if _, payload, n, ok := parseWALRecord(data, off); ok && (n < walRecHeader || int64(len(payload)) > n) {
			t.Fatalf("record of %d bytes with a %d-byte payload", n, len(payload))
		}
		parseWALHeader(append(data, make([]byte, walHeaderSize)...)[:walHeaderSize])
	})
}

func FuzzSplitKey(f *testing.F) {
	f.Add(keyFor("t/x", store.ID{MS: 1, Seq: 2}))
	f.Add(seenKeyFor("inbox/a", "dedup"))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, k []byte) {
		if key, id, ok := splitIDKey(k); ok && !bytes.Equal(keyFor(key, id), k) {
			t.Fatalf("split %x into %q %v", k, key, id)
		}
		splitKey(k)
	})
}
