package filestore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/storetest"
)

// fill writes n messages with recognizable bodies to a store in dir and
// closes it (crashing it instead when crash is set, so that the writes stay
// in the log).
func fill(t *testing.T, dir string, n int, crash bool) {
	t.Helper()
	fillWindow(t, dir, n, crash, 0)
}

// fillWindow is fill with Options.SyncWindow window.
func fillWindow(t *testing.T, dir string, n int, crash bool, window int) {
	t.Helper()
	// No checkpoint while filling (Close makes its own; Crash none): on a
	// busy machine the 200 ms default could apply the first records to the
	// database, and the tests that damage them would find nothing to refuse.
	s, err := filestore.Open(filestore.Options{Dir: dir, Now: storetest.NewClock().Now, SyncWindow: window, CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := s.Append(context.Background(), "t/x", store.Message{Body: fmt.Appendf(nil, "BODY-%04d-%s", i, strings.Repeat("z", 100))}, store.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if crash {
		s.Crash()
	} else if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// wantOpenError opens dir and requires an error that names file and says
// what happened.
func wantOpenError(t *testing.T, dir, file, what string) {
	t.Helper()
	s, err := filestore.Open(filestore.Options{Dir: dir})
	if err == nil {
		s.Close()
		t.Fatalf("Open succeeded on a %s file", what)
	}
	path := filepath.Join(dir, file)
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), what) || !strings.Contains(err.Error(), "Data directory") {
		t.Fatalf("Open error %q does not name %s, say %q and point to the recovery notes", err, path, what)
	}
	t.Logf("%s: %v", what, err)
}

func patch(t *testing.T, path string, fn func(b []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// everyIndex returns where sub occurs in b, failing when nowhere. A
// database file may hold stale copies of a record in pages it freed:
// damage meant for the record must reach the live copy, so it goes to
// every one.
func everyIndex(t *testing.T, b, sub []byte) []int {
	t.Helper()
	var out []int
	for off := 0; ; {
		i := bytes.Index(b[off:], sub)
		if i < 0 {
			break
		}
		out = append(out, off+i)
		off += i + len(sub)
	}
	if len(out) == 0 {
		t.Fatalf("%q not found in the database file", sub)
	}
	return out
}

func TestDamagedDatabaseFileIsRefused(t *testing.T) {
	db := filestore.FileName
	cases := []struct {
		name, what string
		damage     func(b []byte) []byte
	}{
		{"Truncated", "truncated", func(b []byte) []byte { return b[:bytes.Index(b, []byte("BODY-0150-"))] }},
		{"Empty", "truncated", func(b []byte) []byte { return nil }},
		{"BothHeadersZeroed", "damaged", func(b []byte) []byte {
			clear(b[:2*os.Getpagesize()])
			return b
		}},
		{"RecordFlipped", "damaged", func(b []byte) []byte {
			for _, i := range everyIndex(t, b, []byte("BODY-0042-")) {
				b[i+5] ^= 0x20
			}
			return b
		}},
		{"KeyFlipped", "damaged", func(b []byte) []byte {
			// The key of message 42: the queue key's length, the queue key,
			// then the id (the test clock stands still: one millisecond,
			// sequence numbers from 0).
			k := append([]byte{3}, "t/x"...)
			k = binary.BigEndian.AppendUint64(k, uint64(storetest.NewClock().Now().UnixMilli()))
			k = binary.BigEndian.AppendUint64(k, 42)
			for _, i := range everyIndex(t, b, k) {
				b[i+len(k)-1] ^= 0x40
			}
			return b
		}},
		{"PageGarbled", "damaged", func(b []byte) []byte {
			for _, i := range everyIndex(t, b, []byte("BODY-0100-")) {
				page := i / os.Getpagesize() * os.Getpagesize()
				for j := page; j < page+64; j++ {
					b[j] = 0xA5
				}
			}
			return b
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fill(t, dir, 200, false)
			patch(t, filepath.Join(dir, db), tc.damage)
			wantOpenError(t, dir, db, tc.what)
		})
	}
}

func TestDamagedLogIsRefused(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 50, true) // crashed: the writes are only in the log
	// The log file that holds the records: flip a byte in the first one.
	var name string
	for _, n := range []string{"wal-0.log", "wal-1.log"} {
		b, _ := os.ReadFile(filepath.Join(dir, n))
		if bytes.Contains(b, []byte("BODY-0000-")) {
			name = n
		}
	}
	if name == "" {
		t.Fatal("no log file holds the first record")
	}
	patch(t, filepath.Join(dir, name), func(b []byte) []byte {
		b[bytes.Index(b, []byte("BODY-0000-"))] ^= 1
		return b
	})
	wantOpenError(t, dir, name, "damaged")
}

func TestTornLastLogRecordIsDropped(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 50, true)
	// A power cut in the middle of the last write: that write was never
	// acknowledged, and everything before it is kept.
	for _, n := range []string{"wal-0.log", "wal-1.log"} {
		patch(t, filepath.Join(dir, n), func(b []byte) []byte {
			if i := bytes.Index(b, []byte("BODY-0049-")); i >= 0 {
				clear(b[i : i+20])
			}
			return b
		})
	}
	s, err := filestore.Open(filestore.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, _ := s.Len(context.Background(), "t/x"); n != 49 {
		t.Fatalf("Len = %d after a torn last record, want 49", n)
	}
}

func TestDirectoryIsLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := filestore.Open(filestore.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_, err = filestore.Open(filestore.Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
		t.Fatalf("second Open: %v, want an error naming %s and this process", err, dir)
	}
	t.Log(err)
	s.Close()
	// Released on close.
	s, err = filestore.Open(filestore.Options{Dir: dir})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s.Close()
}

// tearRecord zeroes the body of message i in whichever log file holds it,
// as a power cut in the middle of that record's write would leave it.
func tearRecord(t *testing.T, dir string, i int) {
	t.Helper()
	torn := false
	for _, n := range []string{"wal-0.log", "wal-1.log"} {
		patch(t, filepath.Join(dir, n), func(b []byte) []byte {
			if j := bytes.Index(b, fmt.Appendf(nil, "BODY-%04d-", i)); j >= 0 {
				clear(b[j : j+20])
				torn = true
			}
			return b
		})
	}
	if !torn {
		t.Fatalf("no log file holds message %d", i)
	}
}

// TestRecordsWrittenWithATornOneAreDropped: with a sync window of 4, up
// to four records are written and synced at once, each acknowledged only
// once those before it are durable. A power cut can tear one and keep up
// to three after it intact: none of them was acknowledged, so they are
// dropped with it. An intact record further on means damage. With the
// default window of 1 any intact record after a torn one is damage.
func TestRecordsWrittenWithATornOneAreDropped(t *testing.T) {
	t.Run("WithinTheWindow", func(t *testing.T) {
		dir := t.TempDir()
		fillWindow(t, dir, 50, true, 4) // one record per message, all in the log
		tearRecord(t, dir, 46)          // 47, 48 and 49 were in flight with it
		s, err := filestore.Open(filestore.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if n, _ := s.Len(context.Background(), "t/x"); n != 46 {
			t.Fatalf("Len = %d after a torn record with three intact ones after it, want 46", n)
		}
		// The store goes on from there, and a second start agrees.
		if _, err := s.Append(context.Background(), "t/x", store.Message{Body: []byte("after")}, store.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
		s.Crash()
		s, err = filestore.Open(filestore.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if n, _ := s.Len(context.Background(), "t/x"); n != 47 {
			t.Fatalf("Len = %d after a restart, want 47", n)
		}
	})
	t.Run("BeyondTheWindow", func(t *testing.T) {
		dir := t.TempDir()
		fillWindow(t, dir, 50, true, 4)
		tearRecord(t, dir, 45) // 49 could not have been in flight with it
		wantOpenError(t, dir, "wal-", "damaged")
	})
	t.Run("DefaultWindowOfOne", func(t *testing.T) {
		dir := t.TempDir()
		fill(t, dir, 50, true)
		tearRecord(t, dir, 48) // 49 was written after 48 was durable
		wantOpenError(t, dir, "wal-", "damaged")
	})
	t.Run("OlderLogOneAtATime", func(t *testing.T) {
		// A log written by a version that wrote one record at a time (its
		// header has no window): any intact record after a torn one is
		// damage.
		dir := t.TempDir()
		fillWindow(t, dir, 50, true, 4)
		tearRecord(t, dir, 48)
		for _, n := range []string{"wal-0.log", "wal-1.log"} {
			patch(t, filepath.Join(dir, n), func(b []byte) []byte {
				if string(b[:8]) == "PSTNWAL2" {
					copy(b, "PSTNWAL1")
					binary.BigEndian.PutUint32(b[24:], crc32.Checksum(b[:24], crc32.MakeTable(crc32.Castagnoli)))
					clear(b[28:32])
				}
				return b
			})
		}
		wantOpenError(t, dir, "wal-", "damaged")
	})
}
