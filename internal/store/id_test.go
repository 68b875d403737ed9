package store

import (
	"testing"
	"time"
)

func TestParseID(t *testing.T) {
	good := map[string]ID{
		"1746450313373-0":                   {1746450313373, 0},
		"0-1":                               {0, 1},
		"9999999999999999-9999999999999999": {maxIDPart, maxIDPart},
		"007-08":                            {7, 8},
	}
	for s, want := range good {
		got, err := ParseID(s)
		if err != nil || got != want {
			t.Errorf("ParseID(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "-", "1-", "-1", "1", "1--1", "1-1-1", "a-1", "1-a", " 1-1", "1-1 ",
		"12345678901234567-1", "1-12345678901234567", "+1-1", "1-+1", "１-1"} {
		if id, err := ParseID(s); err == nil {
			t.Errorf("ParseID(%q) = %v, want error", s, id)
		}
	}
}

func TestNextIDIncreases(t *testing.T) {
	now := time.UnixMilli(1000)
	a := NextID(ID{}, now)
	if a != (ID{1000, 0}) {
		t.Fatalf("first id %v", a)
	}
	b := NextID(a, now)
	if b != (ID{1000, 1}) {
		t.Fatalf("same ms: %v", b)
	}
	c := NextID(b, time.UnixMilli(10)) // clock stepped back
	if c.Compare(b) <= 0 {
		t.Fatalf("clock step back: %v not after %v", c, b)
	}
	d := NextID(ID{5, maxIDPart}, time.UnixMilli(5))
	if d != (ID{6, 0}) {
		t.Fatalf("seq overflow: %v", d)
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"1746450313373-0", "0-0", "1-", "9999999999999999-9999999999999999", "a-b", "1-1-1", "99999999999999999-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		// A parsed id round-trips modulo leading zeros, and its parts fit 16 digits.
		if id.MS > maxIDPart || id.Seq > maxIDPart {
			t.Fatalf("%q parsed to out-of-range %v", s, id)
		}
		again, err := ParseID(id.String())
		if err != nil || again != id {
			t.Fatalf("%q -> %v -> %q does not round-trip: %v", s, id, id.String(), err)
		}
	})
}
