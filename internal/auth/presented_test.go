package auth_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/auth/authtest"
)

// stripSecrets are the tokens of stripPolicy: plain, with "+" (which a
// query may mean as a space), and with every character a query gives a
// meaning to.
var stripSecrets = []string{"user-secret-0123456789", "plus+user+secret+0123", "eq=amp&semi;pct%25hash#q?-0123"}

func stripPolicy(t testing.TB) *auth.Policy {
	t.Helper()
	var b strings.Builder
	for i, s := range stripSecrets {
		b.WriteString("[[token]]\nname = \"t" + string(rune('a'+i)) + "\"\nsecret = \"" + s + "\"\n[[token.grant]]\nactions = [\"call\"]\npaths = [\"/relay/x\"]\n")
	}
	p, err := auth.Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// keySpellings are spellings of "access_token" a lenient server reads as
// the key.
var keySpellings = []string{
	"access_token", "access%5Ftoken", "access%5ftoken", "%61ccess_token", "ACCESS_TOKEN", "Access%5FToken",
	"%61%63%63%65%73%73%5F%74%6F%6B%65%6E", "aCcEsS_tOkEn",
}

// valueSpellings are spellings of secret as a query value.
func valueSpellings(secret string) []string {
	out := []string{url.QueryEscape(secret), percentAll(secret)}
	if pe := url.PathEscape(secret); !strings.ContainsAny(pe, "&;#") {
		out = append(out, pe)
	}
	if !strings.ContainsAny(secret, "&;%#? ") {
		out = append(out, secret) // unencoded: "+" stays "+"
	}
	return out
}

func percentAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteString("%" + strings.ToUpper(string("0123456789abcdef"[s[i]>>4])+string("0123456789abcdef"[s[i]&15])))
	}
	return b.String()
}

var bearerSpellings = []string{"Bearer %s", "bearer %s", "BEARER   %s  ", "Bearer\t%s"}

// pairs splits a query into its non-empty pairs.
func pairs(q string) []string {
	return slices.DeleteFunc(strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' }), func(s string) bool { return s == "" })
}

// checkStrip is the property: a token inserted into a free-form query (and
// optionally an Authorization header) in any spelling is accepted, and
// once the front doors' Strip has run, the request as it goes on the wire
// holds no spelling of it, while everything else of the query is kept.
func checkStrip(t *testing.T, pol *auth.Policy, query, authz string, which, keyIdx, valIdx, pos, inHeader uint8) {
	t.Helper()
	secret := stripSecrets[int(which)%len(stripSecrets)]
	for _, s := range stripSecrets {
		if authtest.Contains(query, s) || authtest.Contains(authz, s) {
			return // the user's own data holds a secret: not a presentation
		}
	}
	if strings.ContainsAny(authz, "\r\n\x00") || strings.ContainsFunc(query, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return // no HTTP server takes these
	}
	key := keySpellings[int(keyIdx)%len(keySpellings)]
	vals := valueSpellings(secret)
	val := vals[int(valIdx)%len(vals)]
	seps := "&;"
	at := 0
	if len(query) > 0 {
		at = int(pos) % (len(query) + 1)
	}
	before, after := query[:at], query[at:]
	q := before + string(seps[pos&1]) + key + "=" + val + string(seps[(pos>>1)&1]) + after
	h := http.Header{}
	if authz != "" {
		h.Add("Authorization", authz)
	}
	if inHeader&1 == 1 {
		h.Add("Authorization", strings.Replace(bearerSpellings[int(inHeader>>1)%len(bearerSpellings)], "%s", secret, 1))
	}
	tok, ok := auth.Find(h, q).Token(pol)
	if !ok || tok == nil {
		t.Fatalf("token in %q (header %q) not accepted", q, h)
	}
	req := &http.Request{
		Method: "POST", URL: &url.URL{Path: "/x", RawQuery: q}, Host: "svc", Header: h,
		Body: io.NopCloser(strings.NewReader("body")), ContentLength: 4, ProtoMajor: 1, ProtoMinor: 1,
	}
	req.URL.RawQuery = pol.Strip(req.Header, req.URL.RawQuery)
	var wire bytes.Buffer
	if err := req.Write(&wire); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	if authtest.Contains(wire.String(), secret) {
		t.Fatalf("query %q, header %q: the forwarded request holds the token:\n%s", q, h, wire.String())
	}
	if got, want := pairs(req.URL.RawQuery), append(pairs(before), pairs(after)...); !slices.Equal(got, want) {
		t.Fatalf("query %q stripped to %q: want the pairs %q kept", q, req.URL.RawQuery, want)
	}
	if authz != "" && !slices.Contains(req.Header.Values("Authorization"), authz) {
		if _, known := auth.Find(http.Header{"Authorization": {authz}}, "").Token(pol); !known {
			t.Fatalf("the backend's own Authorization %q was removed", authz)
		}
	}
}

// TestStripProperty runs checkStrip on random queries built from the
// characters that matter to query parsers.
func TestStripProperty(t *testing.T) {
	pol := stripPolicy(t)
	rng := rand.New(rand.NewPCG(1, 2))
	const alphabet = "ab=&;%+5F61_-~.!*'()$,/?:@ zZ\x7f\xc3\xa9"
	rnd := func(n int) string {
		b := make([]byte, rng.IntN(n))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	for range 20000 {
		authz := ""
		switch rng.IntN(4) {
		case 0:
			authz = "Bearer " + rnd(20)
		case 1:
			authz = "Basic " + rnd(10)
		}
		checkStrip(t, pol, rnd(40), authz, uint8(rng.Uint32()), uint8(rng.Uint32()), uint8(rng.Uint32()), uint8(rng.Uint32()), uint8(rng.Uint32()))
	}
}

func FuzzStrip(f *testing.F) {
	pol := stripPolicy(f)
	f.Add("a=1", "", uint8(0), uint8(0), uint8(0), uint8(3), uint8(0))
	f.Add("x=1;y=2", "Bearer backend-own", uint8(1), uint8(1), uint8(2), uint8(0), uint8(1))
	f.Add("a=%zz&b=c+d", "Basic Zm9v", uint8(2), uint8(6), uint8(1), uint8(200), uint8(5))
	f.Add("", "", uint8(1), uint8(7), uint8(3), uint8(0), uint8(7))
	f.Fuzz(func(t *testing.T, query, authz string, which, key, val, pos, inHeader uint8) {
		checkStrip(t, pol, query, authz, which, key, val, pos, inHeader)
	})
}

// FuzzFind: on any query and Authorization value, Find does not fail, and
// after Strip nothing the policy knows is presented any more, while every
// pair that Strip kept was in the query.
func FuzzFind(f *testing.F) {
	pol := stripPolicy(f)
	f.Add("a=1&access_token=user-secret-0123456789", "")
	f.Add("x=1;access%5Ftoken=plus+user+secret+0123;y", "Bearer user-secret-0123456789")
	f.Add("%61ccess_token=%zz&&;", "bearer\tplus+user+secret+0123")
	f.Add("access_token=eq%3Damp%26semi%3Bpct%2525hash%23q%3F-0123", "Basic x")
	f.Fuzz(func(t *testing.T, query, authz string) {
		h := http.Header{"Authorization": {authz}}
		q := pol.Strip(h, query)
		if tok, ok := auth.Find(h, q).Token(pol); ok {
			t.Fatalf("after Strip(%q, %q) = %q, %q: token %q still presented", query, authz, q, h, tok.Name)
		}
		kept := pairs(query)
		for _, p := range pairs(q) {
			if !slices.Contains(kept, p) {
				t.Fatalf("Strip(%q) = %q: pair %q was not in the query", query, q, p)
			}
		}
	})
}

// TestFindReadsEverySpelling: the spellings of the catalogue are each
// found, and nothing else is.
func TestFindReadsEverySpelling(t *testing.T) {
	pol := stripPolicy(t)
	for _, secret := range stripSecrets {
		for _, p := range authtest.Presentations(secret) {
			h := p.Header.Clone()
			if h == nil {
				h = http.Header{}
			}
			if _, ok := auth.Find(h, p.Query).Token(pol); !ok {
				t.Errorf("%s (%q %v): not accepted", p.Name, p.Query, p.Header)
			}
		}
	}
	for _, c := range []struct{ query, authz string }{
		{"access_tokens=user-secret-0123456789", ""},
		{"xaccess_token=user-secret-0123456789", ""},
		{"access_token", ""},
		{"access_token=", ""},
		{"", "Basic user-secret-0123456789"},
		{"", "Bearer user-secret-0123456789 x"},
		{"", "XBearer user-secret-0123456789"},
	} {
		h := http.Header{}
		if c.authz != "" {
			h.Set("Authorization", c.authz)
		}
		if _, ok := auth.Find(h, c.query).Token(pol); ok {
			t.Errorf("%q %q: accepted", c.query, c.authz)
		}
	}
	// The first token presented wins: the header before the query.
	h := http.Header{"Authorization": {"Bearer header-secret-0123"}}
	if s, ok := auth.Find(h, "access_token=query-secret").Secret(); !ok || s != "header-secret-0123" {
		t.Errorf("Secret = %q %v", s, ok)
	}
	if s, ok := auth.Find(http.Header{}, "a=1&%61ccess_token=q%2Bs").Secret(); !ok || s != "q+s" {
		t.Errorf("Secret = %q %v", s, ok)
	}
}

// TestStripKeepsTheRest: only pairs carrying postern's tokens go; the
// rest of the query stays byte for byte, the backend's own credentials too.
func TestStripKeepsTheRest(t *testing.T) {
	pol := stripPolicy(t)
	for _, c := range []struct{ in, want string }{
		{"a=1&access_token=user-secret-0123456789", "a=1"},
		{"access_token=user-secret-0123456789&a=%2F&b=c+d", "a=%2F&b=c+d"},
		{"x=1;access%5Ftoken=user-secret-0123456789;y=2", "x=1;y=2"},
		{"a=%zz&access_token=user-secret-0123456789&z", "a=%zz&z"},
		{"access_token=not-a-postern-token&a=1", "access_token=not-a-postern-token&a=1"},
		{"access_token=plus+user+secret+0123", ""},
		{"access_token=plus%2Buser%2Bsecret%2B0123&access_token=theirs", "access_token=theirs"},
		{"a=1&", "a=1&"},
	} {
		if got := pol.Strip(http.Header{}, c.in); got != c.want {
			t.Errorf("Strip(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	h := http.Header{"Authorization": {"Bearer backends-own", "Bearer user-secret-0123456789"}}
	pol.Strip(h, "")
	if got := h.Values("Authorization"); !slices.Equal(got, []string{"Bearer backends-own"}) {
		t.Errorf("Authorization after Strip: %q", got)
	}
	h = http.Header{"Authorization": {"bearer user-secret-0123456789"}}
	pol.Strip(h, "")
	if _, ok := h["Authorization"]; ok {
		t.Errorf("Authorization kept: %q", h)
	}
	var none *auth.Policy
	if got := none.Strip(http.Header{}, "access_token=x"); got != "access_token=x" {
		t.Errorf("nil policy stripped: %q", got)
	}
}
