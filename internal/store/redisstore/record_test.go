package redisstore

import (
	"bytes"
	"testing"
)

// FuzzRecord: any record read back from Redis decodes without panicking,
// and what encode writes decodes to the same message.
func FuzzRecord(f *testing.F) {
	f.Add(int64(0), int64(0), "", "text/plain", []byte("hello"), "5,0,0:10:text/plainhello")
	f.Add(int64(1767322445000), int64(1767322446000), "k1", "", []byte{0, 1, 2}, "1,2,3:ab")
	f.Add(int64(-1), int64(5), "a:b,c", "x,y:z", []byte(nil), ",,:")
	f.Fuzz(func(t *testing.T, exp, until int64, dk, ct string, body []byte, raw string) {
		decode("1-0", raw) // must not panic
		if exp < 0 || until < 0 {
			return
		}
		m, err := decode("12-3", encode(exp, until, dk, ct, body))
		if err != nil {
			t.Fatalf("decode(encode(...)): %v", err)
		}
		if m.DedupKey != dk || m.ContentType != ct || !bytes.Equal(m.Body, body) || (exp > 0) != !m.ExpiresAt.IsZero() {
			t.Fatalf("round trip: %+v", m)
		}
		if exp > 0 && m.ExpiresAt.UnixMilli() != exp {
			t.Fatalf("expiry %v, want %d", m.ExpiresAt, exp)
		}
	})
}

func FuzzTag(f *testing.F) {
	for _, s := range []string{"", "t/demo", "{", "}", "a{b}c", "%7B", "%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, k string) {
		tg := tag(k)
		if tg == "" || bytes.ContainsAny([]byte(tg), "{}") {
			t.Fatalf("tag(%q) = %q", k, tg)
		}
	})
}
