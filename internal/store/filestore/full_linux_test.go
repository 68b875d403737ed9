//go:build linux

package filestore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
)

// These tests put the data directory on a small tmpfs of their own, so that
// the disk really fills up (ENOSPC) and really turns read-only (EROFS):
// tests run as root, so permissions would not stop a write. Mounting needs
// CAP_SYS_ADMIN; without it the tests skip, or fail under CI=true.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mounting a tmpfs for the full-disk test: %v", err)
		}
		t.Skipf("cannot mount a tmpfs here (%v); the full-disk tests need root with CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func remount(t *testing.T, dir string, flags uintptr) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT|flags, ""); err != nil {
		t.Fatalf("remount %s: %v", dir, err)
	}
}

// fillDisk writes a file in dir until the file system is full.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// Fill the last partial block too.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
	return path
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// smallDisk returns an 8 MB tmpfs, the data directory in it, and options
// with a small log, frequent checkpoints and a short retry interval.
func smallDisk(t *testing.T) (mnt, dir string, opts filestore.Options) {
	t.Helper()
	mnt = mountTmpfs(t, "8m")
	dir = filepath.Join(mnt, "data")
	return mnt, dir, filestore.Options{Dir: dir, WALSize: 512 << 10, RetryInterval: 20 * time.Millisecond, CheckpointInterval: 10 * time.Millisecond, Logger: quietLogger()}
}

// appendOnceWritable appends to key until the store takes writes again
// after the disk had room again (the retry interval runs on the wall
// clock), failing on any error but ErrNoSpace or after 10 seconds.
func appendOnceWritable(t *testing.T, s *filestore.Store, key string) store.ID {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := s.Append(context.Background(), key, store.Message{Body: []byte("after")}, store.AppendOptions{})
		if err == nil {
			return res.ID
		}
		if !errors.Is(err, store.ErrNoSpace) || time.Now().After(deadline) {
			t.Fatalf("append after space came back: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFullDiskRefusesWritesKeepsReads(t *testing.T) {
	ctx := context.Background()
	mnt, dir, opts := smallDisk(t)
	s, err := filestore.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	body := []byte(strings.Repeat("m", 2000))
	first, err := s.Append(ctx, "t/full", store.Message{Body: []byte("first")}, store.AppendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m, ok, err := takeNow(s, "t/full", store.TakePending); !ok || err != nil || m.ID != first.ID {
		t.Fatalf("Take pending: %v %v", ok, err)
	}
	filler := fillDisk(t, mnt)

	// Writes go on into the log, which has its room, until the log needs the
	// checkpoints that the full disk refuses; then they fail with ErrNoSpace.
	acked := 1
	var werr error
	for i := 0; i < 5000 && werr == nil; i++ {
		if _, werr = s.Append(ctx, "t/full", store.Message{Body: body}, store.AppendOptions{}); werr == nil {
			acked++
		}
	}
	if !errors.Is(werr, store.ErrNoSpace) || !strings.Contains(werr.Error(), dir) {
		t.Fatalf("append on a full disk: %v, want ErrNoSpace naming %s", werr, dir)
	}
	t.Logf("%d appends acknowledged before the disk was full: %v", acked, werr)
	// Reads keep working, and so does handing out the pending message again.
	if n, err := s.Len(ctx, "t/full"); err != nil || n != acked {
		t.Fatalf("Len on a full disk = %d, %v; want %d", n, err, acked)
	}
	if st, err := s.Status(ctx, "t/full", first.ID); err != nil || st != store.StatePending {
		t.Fatalf("Status on a full disk = %v, %v", st, err)
	}
	if m, ok, err := takeNow(s, "t/full", store.TakePending); !ok || err != nil || string(m.Body) != "first" {
		t.Fatalf("Take pending on a full disk = %q %v %v", m.Body, ok, err)
	}
	// A write may get through once the retry interval is over, if the
	// database found a free page for it; otherwise it is refused.
	acks := 0
	if ok, err := s.Ack(ctx, "t/full", first.ID); err == nil && ok {
		acks++
	} else if !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("Ack on a full disk: %v, want ErrNoSpace", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping on a full disk: %v (reads work: the store is ready)", err)
	}

	// Space comes back: writes work again, once the retry interval is over.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	appendOnceWritable(t, s, "t/full")
	acked++
	if ok, err := s.Ack(ctx, "t/full", first.ID); err != nil || ok == (acks == 1) {
		t.Fatalf("Ack after space came back: %v %v", ok, err)
	}
	acked--
	// Everything acknowledged is there after a restart.
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s, err = filestore.Open(opts); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Len(ctx, "t/full"); n != acked {
		t.Fatalf("Len after restart = %d, want %d", n, acked)
	}
}

// TestReadOnlyDirectoryServesReads: on a data directory that cannot be
// written (here a tmpfs remounted read-only; Linux refuses that while a
// file is open for writing, so the store is closed first), the store opens
// for reading, replays its log into memory, and refuses every write with
// ErrUnavailable.
func TestReadOnlyDirectoryServesReads(t *testing.T) {
	ctx := context.Background()
	mnt := mountTmpfs(t, "64m")
	dir := filepath.Join(mnt, "data")
	fill(t, dir, 10, false)
	fill(t, dir, 5, true) // these five are only in the log
	remount(t, mnt, syscall.MS_RDONLY)
	defer remount(t, mnt, 0)
	s, err := filestore.Open(filestore.Options{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("Open on a read-only directory: %v", err)
	}
	defer s.Close()
	if n, err := s.Len(ctx, "t/x"); n != 15 || err != nil {
		t.Fatalf("Len = %d, %v; want 15", n, err)
	}
	_, err = s.Append(ctx, "t/x", store.Message{Body: []byte("refused")}, store.AppendOptions{})
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "read-only") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("append on a read-only directory: %v, want ErrUnavailable saying read-only and naming %s", err, dir)
	}
	t.Log(err)
	if _, _, err := takeNow(s, "t/x", store.TakeDelete); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("consume on a read-only directory: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v (reads work: ready)", err)
	}
	s.Close()

	// Over HTTP: 503 with the reason, reads as usual.
	cfg := servertest.Config()
	cfg.Store = "file:" + dir
	n := servertest.Start(t, cfg)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	res, err := c.Post(n.URL+"/t/x", "text/plain", strings.NewReader("refused"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 503 || !strings.Contains(string(b), "read-only") || strings.Contains(string(b), "\n") {
		t.Fatalf("produce on a read-only directory: %d %q, want 503 with a one-line reason", res.StatusCode, b)
	}
	res, err = c.Get(n.URL + "/t/x/len")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 204 || res.Header.Get("X-Queue-Size") != "15" {
		t.Fatalf("len on a read-only directory: %d %q", res.StatusCode, res.Header.Get("X-Queue-Size"))
	}
	// Not ready: a load balancer should send writers elsewhere (issue 21).
	res, err = c.Get(n.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 503 || string(b) != "not ready" {
		t.Fatalf("readyz on a read-only directory: %d %q", res.StatusCode, b)
	}
}

// TestFullDiskOverHTTP: a tunnel produce on a full disk answers 507 with a
// one-line reason, while reads answer as usual.
func TestFullDiskOverHTTP(t *testing.T) {
	mnt := mountTmpfs(t, "40m")
	cfg := servertest.Config()
	cfg.Store = "file:" + filepath.Join(mnt, "data")
	n := servertest.Start(t, cfg)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	do := func(method, path, body string) (int, string, http.Header) {
		req, _ := http.NewRequest(method, n.URL+path, strings.NewReader(body))
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b), res.Header
	}
	if st, _, _ := do("POST", "/t/full", "kept"); st != 201 {
		t.Fatalf("produce: %d", st)
	}
	if st, body, _ := do("GET", "/t/full?pending", ""); st != 200 || body != "kept" {
		t.Fatalf("pending read: %d %q", st, body)
	}
	filler := fillDisk(t, mnt)
	// Free the space before the node stops, so that its last checkpoint
	// can be written (the log would keep the writes anyway).
	t.Cleanup(func() { os.Remove(filler) })
	big := strings.Repeat("x", 100<<10)
	var st int
	var msg string
	for i := 0; i < 1000; i++ {
		if st, msg, _ = do("POST", "/t/full?limit=0", big); st != 201 {
			break
		}
	}
	if st != 507 || msg != "storage full: write refused" {
		t.Fatalf("produce on a full disk: %d %q, want 507", st, msg)
	}
	if st, _, h := do("GET", "/t/full/len", ""); st != 204 || h.Get("X-Queue-Size") == "0" {
		t.Fatalf("len on a full disk: %d %v", st, h)
	}
	if st, body, _ := do("GET", "/t/full?pending", ""); st != 200 || body != "kept" {
		t.Fatalf("pending read on a full disk: %d %q", st, body)
	}
	if st, _, _ := do("GET", "/readyz", ""); st != 200 {
		t.Fatalf("readyz on a full disk: %d (reads work)", st)
	}
}

// TestFullDiskConcurrentWriters: many writers at once, so that several
// batches are in flight when the log needs a checkpoint the full disk
// refuses. Every write fails or is acknowledged, the store takes writes
// again once there is room, and after a restart it holds exactly the
// acknowledged messages, in order.
func TestFullDiskConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	mnt, _, opts := smallDisk(t)
	opts.SyncWindow = 4 // several batches syncing at once when the disk fills
	s, err := filestore.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	filler := fillDisk(t, mnt)
	body := []byte(strings.Repeat("m", 2000))
	const writers = 16
	acked := make([][]store.ID, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			key := fmt.Sprintf("t/full-%d", w)
			failures := 0
			for failures < 20 {
				res, err := s.Append(ctx, key, store.Message{Body: body}, store.AppendOptions{})
				switch {
				case err == nil:
					acked[w] = append(acked[w], res.ID)
				case errors.Is(err, store.ErrNoSpace), errors.Is(err, store.ErrUnavailable):
					failures++
				default:
					t.Errorf("append: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	acked[0] = append(acked[0], appendOnceWritable(t, s, "t/full-0"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s, err = filestore.Open(opts); err != nil {
		t.Fatal(err)
	}
	total := 0
	for w, ids := range acked {
		key := fmt.Sprintf("t/full-%d", w)
		total += len(ids)
		for _, id := range ids {
			m, ok, err := takeNow(s, key, store.TakeDelete)
			if err != nil || !ok || m.ID != id {
				t.Fatalf("%s after restart: got %v %v %v, want acknowledged message %v next", key, m.ID, ok, err, id)
			}
		}
		if n, _ := s.Len(ctx, key); n != 0 {
			t.Fatalf("%s holds %d messages beyond the acknowledged ones", key, n)
		}
	}
	t.Logf("%d appends acknowledged by %d writers on a full disk, all there after a restart", total, writers)
}
