// Command engines compares the embedded libraries the file engine could be
// built on (go.etcd.io/bbolt and github.com/cockroachdb/pebble) under the
// file engine's real write pattern: concurrent durable appends funnelled
// through one group committer (every batch is one synced transaction), then
// durable deletes of the same records, then the size on disk of a million
// messages and the time to reopen and scan them.
//
// It is its own module so that the library that lost never enters
// postern's main module:
//
//	cd bench/engines && go run . -n 1000000
//
// Every figure is noisy on a small shared machine: compare the two columns
// of one run, not runs with each other.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// kv is what the file engine needs from a library.
type kv interface {
	// commit applies one batch of puts (val != nil) and deletes atomically
	// and durably.
	commit(b []mut) error
	// scan visits every record.
	scan(fn func(k, v []byte)) error
	close() error
}

type mut struct{ k, v []byte }

type engine struct {
	name string
	open func(dir string) (kv, error)
}

var engines []engine

// committer is the file engine's group commit: writers queue their
// mutations and wait; one goroutine commits everything queued since its
// last commit as one synced batch.
type committer struct {
	db   kv
	mu   sync.Mutex
	cur  *batch
	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	batches int
}

type batch struct {
	muts []mut
	done chan struct{}
	err  error
}

func newCommitter(db kv) *committer {
	c := &committer{db: db, cur: &batch{done: make(chan struct{})}, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go c.loop()
	return c
}

func (c *committer) submit(ms ...mut) error {
	c.mu.Lock()
	b := c.cur
	b.muts = append(b.muts, ms...)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	<-b.done
	return b.err
}

func (c *committer) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			return
		case <-c.kick:
		}
		c.mu.Lock()
		b := c.cur
		c.cur = &batch{done: make(chan struct{})}
		c.mu.Unlock()
		if len(b.muts) == 0 {
			close(b.done)
			continue
		}
		b.err = c.db.commit(b.muts)
		c.batches++
		close(b.done)
	}
}

func (c *committer) close() { close(c.stop); <-c.done }

// key is the engine's message key: length-prefixed queue key, then the id.
func key(queue int, id uint64) []byte {
	q := fmt.Sprintf("t/bench-%02d", queue)
	k := make([]byte, 0, 1+len(q)+16)
	k = append(k, byte(len(q)))
	k = append(k, q...)
	k = binary.BigEndian.AppendUint64(k, uint64(time.Now().UnixMilli()))
	return binary.BigEndian.AppendUint64(k, id)
}

func value(body []byte) []byte {
	v := make([]byte, 0, 32+len(body))
	v = append(v, 1, 0)                          // version, flags
	v = binary.BigEndian.AppendUint64(v, 0)      // expires
	v = binary.BigEndian.AppendUint32(v, 0)      // crc (not computed here)
	v = append(v, byte(len("application/json"))) // content type
	v = append(v, "application/json"...)         //
	v = append(v, 0)                             // dedup key
	return append(v, body...)
}

type result struct {
	appendRate, appendP99, deleteRate, deleteP99 float64
	batches                                      int
	sizeMB, reopenS, fillS                       float64
}

func p99(lat []time.Duration) float64 {
	slices.Sort(lat)
	return float64(lat[len(lat)*99/100]) / float64(time.Millisecond)
}

// concurrent runs workers × each durable single-record writes through c.
func concurrent(c *committer, workers, each int, mk func(w, i int) mut) (rate, p99ms float64, err error) {
	lat := make([]time.Duration, workers*each)
	var wg sync.WaitGroup
	var mu sync.Mutex
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				t0 := time.Now()
				if e := c.submit(mk(w, i)); e != nil {
					mu.Lock()
					err = e
					mu.Unlock()
					return
				}
				lat[w*each+i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	return float64(workers*each) / el.Seconds(), p99(lat), err
}

func dirSize(dir string) float64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return float64(n) / (1 << 20)
}

func run(e engine, workers, each, n, bodySize int, repetitive bool) (result, error) {
	var r result
	// Bodies are windows of a pool: random hex (which compresses to about
	// half) unless repetitive is set, and different for every message.
	pool := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range pool {
		if repetitive {
			pool[i] = "abcdefghijklmnopqrstuvwxyz{}\":,0123456789"[i%41]
		} else {
			pool[i] = "0123456789abcdef"[rng.IntN(16)]
		}
	}
	var bodyMu sync.Mutex
	body := func() []byte {
		bodyMu.Lock()
		off := rng.IntN(len(pool) - bodySize)
		bodyMu.Unlock()
		return pool[off : off+bodySize]
	}
	dir, err := os.MkdirTemp("", "engines-"+e.name+"-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	db, err := e.open(dir)
	if err != nil {
		return r, err
	}
	c := newCommitter(db)
	keys := make([][]byte, workers*each)
	r.appendRate, r.appendP99, err = concurrent(c, workers, each, func(w, i int) mut {
		k := key(w, uint64(i))
		keys[w*each+i] = k
		return mut{k, value(body())}
	})
	if err != nil {
		return r, err
	}
	r.batches = c.batches
	r.deleteRate, r.deleteP99, err = concurrent(c, workers, each, func(w, i int) mut { return mut{k: keys[w*each+i]} })
	if err != nil {
		return r, err
	}
	c.close()

	// Fill to n messages in batches of 1000, as a busy server would.
	t0 := time.Now()
	for i := 0; i < n; i += 1000 {
		b := make([]mut, 0, 1000)
		for j := i; j < i+1000 && j < n; j++ {
			b = append(b, mut{key(j%64, uint64(j)), value(body())})
		}
		if err := db.commit(b); err != nil {
			return r, err
		}
	}
	r.fillS = time.Since(t0).Seconds()
	if err := db.close(); err != nil {
		return r, err
	}
	r.sizeMB = dirSize(dir)
	t0 = time.Now()
	db, err = e.open(dir)
	if err != nil {
		return r, err
	}
	count := 0
	if err := db.scan(func(k, v []byte) { count++ }); err != nil {
		return r, err
	}
	r.reopenS = time.Since(t0).Seconds()
	if count != n {
		return r, fmt.Errorf("%s: scanned %d records after reopen, want %d", e.name, count, n)
	}
	return r, db.close()
}

func main() {
	workers := flag.Int("conns", 32, "concurrent writers")
	each := flag.Int("each", 500, "durable appends (then deletes) per writer")
	n := flag.Int("n", 1_000_000, "messages for the size and reopen figures")
	bodySize := flag.Int("body", 200, "message body `bytes`")
	repetitive := flag.Bool("repetitive", false, "repetitive bodies, which compress well (default: random hex, which compresses to about half)")
	flag.Parse()
	fmt.Printf("| library | appends/s | append p99 | deletes/s | delete p99 | writes per sync | MB on disk (%d msgs) | fill s | reopen+scan s |\n", *n)
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	var errs []error
	for _, e := range engines {
		r, err := run(e, *workers, *each, *n, *bodySize, *repetitive)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Printf("| %s | %.0f | %.2f ms | %.0f | %.2f ms | %.1f | %.0f | %.1f | %.2f |\n", e.name, r.appendRate, r.appendP99,
			r.deleteRate, r.deleteP99, float64(*workers**each)/float64(r.batches), r.sizeMB, r.fillS, r.reopenS)
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
