package node

import "testing"

// TestDerivedCaps: how the configured connection caps become the applied
// ones: zero takes the default (per address DefaultMaxConnectionsPerAddr,
// lowered to half a small node cap so one address never holds the whole
// node), a negative value means no cap, an explicit value is kept.
func TestDerivedCaps(t *testing.T) {
	for _, c := range []struct {
		name                 string
		total, perAddr       int
		wantMax, wantPerAddr int
	}{
		{"defaults on a big node", 10000, 0, 10000, DefaultMaxConnectionsPerAddr},
		{"default per address halved on a small node", 1000, 0, 1000, 500},
		{"explicit per address kept", 1000, 800, 1000, 800},
		{"no node cap", -1, 0, 0, DefaultMaxConnectionsPerAddr},
		{"no cap at all", -1, -1, 0, 0},
	} {
		got := resolveConnCaps(c.total, c.perAddr, false)
		if got.max != c.wantMax || got.perAddr != c.wantPerAddr {
			t.Errorf("%s: caps %d/%d, want %d/%d", c.name, got.max, got.perAddr, c.wantMax, c.wantPerAddr)
		}
	}
	// Derived from the file limit: what is left after the node's own
	// descriptors and the ops reserve; half of it when the node forwards.
	if got, want := deriveMaxConnections(4096, false), 4096-reservedFiles-OpsConnections; got != want {
		t.Errorf("from 4096 files: %d, want %d", got, want)
	}
	if got, want := deriveMaxConnections(4096, true), (4096-reservedFiles)/2-OpsConnections; got != want {
		t.Errorf("from 4096 files, forwarding: %d, want %d", got, want)
	}
	if got := deriveMaxConnections(0, false); got != 0 {
		t.Errorf("unknown file limit: %d, want 0 (no cap)", got)
	}
}
