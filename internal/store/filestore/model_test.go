package filestore_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/memstore"
	"github.com/postern/postern/internal/store/storetest"
)

// TestMatchesMemoryEngine runs the same random operations on the memory
// engine (the reference) and the file engine, reopening the file engine
// now and then (cleanly or as after kill -9), and requires the same answers.
// Small log files make rotations and oversized batches common.
func TestMatchesMemoryEngine(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runModel(t, seed, 1500) })
	}
}

// pair is one message handed out by both engines, under a lease each.
type pair struct{ file, mem store.Lease }

// modelLease is the lease of the model's takes: the clock steps of up to
// 40 s let some run out.
const modelLease = 30 * time.Second

func runModel(t *testing.T, seed uint64, steps int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 42))
	c := storetest.NewClock()
	dir := t.TempDir()
	opts := filestore.Options{Dir: dir, Now: c.Now, SweepInterval: -1, WALSize: 64 << 10}
	fs, err := filestore.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if fs != nil {
			fs.Close()
		}
	}()
	ms := memstore.New(memstore.Options{Now: c.Now, SweepInterval: -1})
	defer ms.Close()

	type kid struct {
		key string
		id  store.ID
	}
	ids := map[kid]store.ID{}           // file id -> memory id; ids are per key
	taken := map[string][]pair{}        // handed out and not settled yet
	known := map[string][][2]store.ID{} // appended ids per key, for Ack, Status, Reply
	keys := []string{"t/a", "t/b", "inbox/c"}
	var log []string
	trace := func(format string, args ...any) { log = append(log, fmt.Sprintf(format, args...)) }
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range log[max(0, len(log)-80):] {
				t.Log(l)
			}
		}
	})
	var key string
	same := func(step int, what string, f, m store.Message) {
		t.Helper()
		if ids[kid{key, f.ID}] != m.ID || f.ContentType != m.ContentType || !bytes.Equal(f.Body, m.Body) || f.DedupKey != m.DedupKey || !f.ExpiresAt.Equal(m.ExpiresAt) {
			t.Fatalf("step %d %s: file %v %q %d bytes %q %v, memory %v %q %d bytes %q %v", step, what,
				f.ID, f.ContentType, len(f.Body), f.DedupKey, f.ExpiresAt, m.ID, m.ContentType, len(m.Body), m.DedupKey, m.ExpiresAt)
		}
	}
	for step := range steps {
		key = keys[rng.IntN(len(keys))]
		var fid, mid store.ID
		if kn := known[key]; len(kn) > 0 && rng.IntN(4) > 0 {
			k := kn[rng.IntN(len(kn))]
			fid, mid = k[0], k[1]
		} else {
			fid = store.ID{MS: uint64(rng.IntN(1000)), Seq: 1}
			mid = fid
		}
		if step%10 == 0 {
			// After a checkpoint the database file holds what the index does.
			if d := fs.CheckDisk(); d != "" {
				t.Fatalf("before step %d: %s", step, d)
			}
		}
		op := rng.IntN(100)
		trace("step %d op %d key %s fid %v mid %v", step, op, key, fid, mid)
		switch {
		case op < 30:
			size := rng.IntN(300)
			if rng.IntN(20) == 0 {
				size = 40 << 10 // larger than a log record may carry
			}
			m := store.Message{ContentType: fmt.Sprint("ct", rng.IntN(3)), Body: bytes.Repeat([]byte{byte(step)}, size)}
			o := store.AppendOptions{}
			if rng.IntN(3) == 0 {
				o.DedupKey = fmt.Sprint("k", rng.IntN(4))
				o.DedupWindow = time.Duration(rng.IntN(3)) * time.Minute
			}
			if rng.IntN(4) == 0 {
				o.TTL = time.Duration(1+rng.IntN(90)) * time.Second
			}
			if rng.IntN(4) == 0 {
				o.Limit = 1 + rng.IntN(8)
			}
			if rng.IntN(4) == 0 {
				o.MaxLen = 1 + rng.IntN(8)
			}
			fr, ferr := fs.Append(ctx, key, m, o)
			mr, merr := ms.Append(ctx, key, m, o)
			trace("  append %d bytes %+v: file %+v %v, memory %+v %v", len(m.Body), o, fr, ferr, mr, merr)
			if (ferr == nil) != (merr == nil) || fr.Len != mr.Len || fr.Trimmed != mr.Trimmed || fr.Duplicate != mr.Duplicate {
				t.Fatalf("step %d Append: file %+v %v, memory %+v %v", step, fr, ferr, mr, merr)
			}
			if ferr == nil && !fr.Duplicate {
				ids[kid{key, fr.ID}] = mr.ID
				known[key] = append(known[key], [2]store.ID{fr.ID, mr.ID})
			} else if ferr == nil && ids[kid{key, fr.ID}] != mr.ID {
				t.Fatalf("step %d Append duplicate: file id %v, memory id %v", step, fr.ID, mr.ID)
			}
		case op < 48:
			mode := store.TakeMode(rng.IntN(2))
			f, fok, ferr := fs.Take(ctx, key, mode, modelLease)
			m, mok, merr := ms.Take(ctx, key, mode, modelLease)
			trace("  take %v: file %v %v %d, memory %v %v %d", mode, fok, f.ID, len(f.Body), mok, m.ID, len(m.Body))
			if ferr != nil || merr != nil || fok != mok {
				t.Fatalf("step %d Take: file %v %v, memory %v %v", step, fok, ferr, mok, merr)
			}
			if fok {
				same(step, "Take", f.Message, m.Message)
				taken[key] = append(taken[key], pair{f, m})
			}
		case op < 52:
			n := rng.IntN(3)
			f, ferr := fs.TakeAll(ctx, key, n, modelLease)
			m, merr := ms.TakeAll(ctx, key, n, modelLease)
			trace("  takeall %d: file %d, memory %d", n, len(f), len(m))
			if ferr != nil || merr != nil || len(f) != len(m) {
				t.Fatalf("step %d TakeAll: file %d %v, memory %d %v", step, len(f), ferr, len(m), merr)
			}
			for i := range f {
				same(step, "TakeAll", f[i].Message, m[i].Message)
				taken[key] = append(taken[key], pair{f[i], m[i]})
			}
		case op < 60:
			if len(taken[key]) == 0 {
				continue
			}
			i := rng.IntN(len(taken[key]))
			p := taken[key][i]
			taken[key] = append(taken[key][:i], taken[key][i+1:]...)
			delivered := rng.IntN(3) > 0
			trace("  settle file %v memory %v delivered %v", p.file.ID, p.mem.ID, delivered)
			ferr := fs.Settle(ctx, key, []store.Lease{p.file}, delivered)
			merr := ms.Settle(ctx, key, []store.Lease{p.mem}, delivered)
			if ferr != nil || merr != nil {
				t.Fatalf("step %d Settle: file %v, memory %v", step, ferr, merr)
			}
		case op < 67:
			fok, ferr := fs.Ack(ctx, key, fid)
			mok, merr := ms.Ack(ctx, key, mid)
			trace("  ack: %v %v", fok, mok)
			if ferr != nil || merr != nil || fok != mok {
				t.Fatalf("step %d Ack: file %v %v, memory %v %v", step, fok, ferr, mok, merr)
			}
		case op < 72:
			fst, ferr := fs.Status(ctx, key, fid)
			mst, merr := ms.Status(ctx, key, mid)
			if ferr != nil || merr != nil || fst != mst {
				t.Fatalf("step %d Status: file %v %v, memory %v %v", step, fst, ferr, mst, merr)
			}
		case op < 76:
			fn, ferr := fs.Len(ctx, key)
			mn, merr := ms.Len(ctx, key)
			if ferr != nil || merr != nil || fn != mn {
				t.Fatalf("step %d Len: file %v %v, memory %v %v", step, fn, ferr, mn, merr)
			}
		case op < 78:
			fn, ferr := fs.Clear(ctx, key)
			mn, merr := ms.Clear(ctx, key)
			trace("  clear: %v %v", fn, mn)
			if ferr != nil || merr != nil || fn != mn {
				t.Fatalf("step %d Clear: file %v %v, memory %v %v", step, fn, ferr, mn, merr)
			}
		case op < 86:
			r := store.Message{ContentType: "reply", Body: []byte(fmt.Sprint("reply ", step))}
			ttl := time.Duration(1+rng.IntN(120)) * time.Second
			fok, ferr := fs.Reply(ctx, key, fid, r, ttl)
			mok, merr := ms.Reply(ctx, key, mid, r, ttl)
			trace("  reply: %v %v", fok, mok)
			if ferr != nil || merr != nil || fok != mok {
				t.Fatalf("step %d Reply: file %v %v, memory %v %v", step, fok, ferr, mok, merr)
			}
		case op < 92:
			f, fok, ferr := fs.TakeReply(ctx, key, fid)
			m, mok, merr := ms.TakeReply(ctx, key, mid)
			if ferr != nil || merr != nil || fok != mok {
				t.Fatalf("step %d TakeReply: file %v %v, memory %v %v", step, fok, ferr, mok, merr)
			}
			if fok && (f.ContentType != m.ContentType || !bytes.Equal(f.Body, m.Body) || ids[kid{key, f.ID}] != m.ID) {
				t.Fatalf("step %d TakeReply: file %q %q, memory %q %q", step, f.ContentType, f.Body, m.ContentType, m.Body)
			}
		case op < 96:
			d := time.Duration(rng.IntN(40)) * time.Second
			trace("  advance %v", d)
			c.Advance(d)
		default:
			crash := rng.IntN(2) == 0
			trace("  reopen, crash %v", crash)
			if crash {
				fs.Crash()
			} else if err := fs.Close(); err != nil {
				t.Fatal(err)
			}
			if fs, err = filestore.Open(opts); err != nil {
				t.Fatalf("step %d reopen: %v", step, err)
			}
			// The leases died with the process: in the file engine their
			// messages are queued again, as they are in memory once given
			// back.
			for k, ps := range taken {
				for _, p := range ps {
					if err := ms.Settle(ctx, k, []store.Lease{p.mem}, false); err != nil {
						t.Fatal(err)
					}
				}
				delete(taken, k)
			}
			for _, k := range keys {
				fn, _ := fs.Len(ctx, k)
				mn, _ := ms.Len(ctx, k)
				if fn != mn {
					t.Fatalf("step %d after reopen (crash %v): Len(%s) file %d, memory %d; file has %v", step, crash, k, fn, mn, fs.DumpMsgs())
				}
			}
		}
	}
	if fq, mq := fs.QueueStats(), ms.QueueStats(); fq.Messages != mq.Messages {
		t.Fatalf("QueueStats: file %+v, memory %+v", fq, mq)
	}
}
