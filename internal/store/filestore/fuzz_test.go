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
	k := keyFor("t/x", store.ID{MS: 1})
	f.Add(k, encodeMsg(k, "text/plain", "k", time.Unix(0, 5), time.Unix(0, 9), []byte("body")))
	f.Add([]byte{}, encodeMsg(nil, "", "", time.Time{}, time.Time{}, nil))
	f.Add([]byte("k"), []byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, k, v []byte) {
		r, err := decodeMsg(k, v)
		// Reading only the body accepts and refuses the same records.
		if body, berr := msgBody(k, v); (berr == nil) != (err == nil) || err == nil && !bytes.Equal(body, r.body) {
			t.Fatalf("record %x: decodeMsg %v, msgBody %x %v", v, err, body, berr)
		}
		if err != nil {
			return
		}
		// Lengths may be spelled in more bytes than needed; what they say
		// must survive a round trip.
		back, err := decodeMsg(k, encodeMsg(k, r.ct, r.dedupKey, r.expires, r.dedupUntil, r.body))
		if err != nil || back.ct != r.ct || back.dedupKey != r.dedupKey || !back.expires.Equal(r.expires) ||
			!back.dedupUntil.Equal(r.dedupUntil) || !bytes.Equal(back.body, r.body) {
			t.Fatalf("decoded %x as %+v, which encodes back to %+v (%v)", v, r, back, err)
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	b := &batch{maxID: store.ID{MS: 7, Seq: 1}, muts: []mut{
		{bucket: bMsgs, key: keyFor("t/x", store.ID{MS: 7, Seq: 1}), val: []byte("v")},
		{bucket: bPending, key: keyFor("t/x", store.ID{MS: 7}), val: encodePending(keyFor("t/x", store.ID{MS: 7}))},
		{bucket: bSeen, key: seenKeyFor("t/x", "k")},
	}}
	f.Add(appendBatch(nil, b))
	f.Add(appendBatch(nil, &batch{}))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, p []byte) {
		id, muts, err := decodeBatch(p)
		if err != nil {
			return
		}
		// Counts and lengths may be spelled in more bytes than needed; what
		// they say must survive a round trip.
		id2, muts2, err := decodeBatch(appendBatch(nil, &batch{maxID: id, muts: muts}))
		if err != nil || id2 != id || len(muts2) != len(muts) {
			t.Fatalf("decoded %x as %v %d changes, which encode back to %v %d changes (%v)", p, id, len(muts), id2, len(muts2), err)
		}
		for i := range muts {
			a, b := muts[i], muts2[i]
			if a.bucket != b.bucket || !bytes.Equal(a.key, b.key) || (a.val == nil) != (b.val == nil) || !bytes.Equal(a.val, b.val) {
				t.Fatalf("change %d of %x: %+v encodes back as %+v", i, p, a, b)
			}
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
