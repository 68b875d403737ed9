// Package relaytest holds what tests of the relay core and its transports
// share: a store.Directory kept in memory, so that two in-process nodes can
// find each other's backends without a shared storage engine.
package relaytest

import (
	"context"
	"sync"
	"time"

	"github.com/postern/postern/internal/store"
)

// Directory is a store.Directory in memory, safe for concurrent use. It
// honours TTLs and lets a test wait for a registration.
type Directory struct {
	mu      sync.Mutex
	entries map[[2]string]map[string]time.Time // (ns, name) -> addr -> expiry
	writes  map[[2]string]int                  // Register calls per (ns, name)
	nodes   map[string]nodeEntry
	changed chan struct{} // closed and replaced on every change
}

type nodeEntry struct {
	info    store.NodeInfo
	expires time.Time
}

var _ store.Directory = (*Directory)(nil)

// NewDirectory returns an empty directory.
func NewDirectory() *Directory {
	return &Directory{
		entries: make(map[[2]string]map[string]time.Time),
		writes:  make(map[[2]string]int),
		nodes:   make(map[string]nodeEntry),
		changed: make(chan struct{}),
	}
}

func (d *Directory) changedLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// Register implements store.Directory.
func (d *Directory) Register(ctx context.Context, ns, name, addr string, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	k := [2]string{ns, name}
	if d.entries[k] == nil {
		d.entries[k] = make(map[string]time.Time)
	}
	d.entries[k][addr] = time.Now().Add(ttl)
	d.writes[k]++
	d.changedLocked()
	return nil
}

// Unregister implements store.Directory.
func (d *Directory) Unregister(ctx context.Context, ns, name, addr string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	k := [2]string{ns, name}
	delete(d.entries[k], addr)
	if len(d.entries[k]) == 0 {
		delete(d.entries, k)
	}
	d.changedLocked()
	return nil
}

func (d *Directory) lookupLocked(ns, name string) []string {
	var out []string
	now := time.Now()
	for addr, exp := range d.entries[[2]string{ns, name}] {
		if now.Before(exp) {
			out = append(out, addr)
		}
	}
	return out
}

// Lookup implements store.Directory.
func (d *Directory) Lookup(ctx context.Context, ns, name string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lookupLocked(ns, name), nil
}

// Heartbeat implements store.Directory.
func (d *Directory) Heartbeat(ctx context.Context, node store.NodeInfo, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nodes[node.ID] = nodeEntry{info: node, expires: time.Now().Add(ttl)}
	d.changedLocked()
	return nil
}

// Nodes implements store.Directory.
func (d *Directory) Nodes(ctx context.Context) ([]store.NodeInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []store.NodeInfo
	now := time.Now()
	for _, n := range d.nodes {
		if now.Before(n.expires) {
			out = append(out, n.info)
		}
	}
	return out, nil
}

// WaitFor blocks until (ns, name) has exactly want live entries, or ctx
// ends.
func (d *Directory) WaitFor(ctx context.Context, ns, name string, want int) error {
	for {
		d.mu.Lock()
		n := len(d.lookupLocked(ns, name))
		ch := d.changed
		d.mu.Unlock()
		if n == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// WaitForRegisters blocks until Register was called at least n times for
// (ns, name), renewals included, or ctx ends.
func (d *Directory) WaitForRegisters(ctx context.Context, ns, name string, n int) error {
	for {
		d.mu.Lock()
		got := d.writes[[2]string{ns, name}]
		ch := d.changed
		d.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}
