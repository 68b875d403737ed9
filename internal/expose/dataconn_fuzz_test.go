package expose

import (
	"strings"
	"testing"
)

// FuzzDataSecret: whatever a data connection's secret header holds,
// lookup finds the session only for its exact secret, and never panics.
func FuzzDataSecret(f *testing.F) {
	t := &nativeTransport{}
	d := newDataReg(4, nil)
	t.register(d)
	other := newDataReg(4, nil)
	t.register(other)
	secret := d.secret()
	id, key, _ := strings.Cut(secret, ".")
	for _, s := range []string{secret, other.secret(), id, id + ".", "." + key, id + "." + key + ".", id + "." + key[1:], "", ".", "..", strings.ToUpper(secret), id + "\x00." + key} {
		f.Add(s)
	}
	f.Fuzz(func(tt *testing.T, s string) {
		switch got := t.lookup(s); {
		case s == secret && got != d:
			tt.Fatalf("%q: the session's own secret not found", s)
		case s == other.secret() && got != other:
			tt.Fatalf("%q: the other session's secret not found", s)
		case s != secret && s != other.secret() && got != nil:
			tt.Fatalf("%q: found a session with a secret not its own", s)
		}
	})
}
