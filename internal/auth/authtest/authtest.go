// Package authtest owns the catalogue of ways a client may present a
// postern token, and the check that a request forwarded by postern carries
// no trace of one. The leak tests of every front door that forwards
// requests (expose, relay) run the same catalogue, so a spelling the token
// parser learns is tested everywhere at once.
package authtest

import (
	"encoding/hex"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// Presentation is one way to present a token: a raw query and headers.
type Presentation struct {
	Name   string
	Query  string // raw query, without "?"
	Header http.Header
}

// Presentations returns the ways a client may present secret that postern
// accepts: the plain query parameter, its percent-encoded spellings, ";"
// separators, repeated and mixed-case keys, the value unencoded (for a
// secret holding "+", which a query may mean as a space), and the
// Authorization header, alone and next to a credential of the backend's.
func Presentations(secret string) []Presentation {
	enc := url.QueryEscape(secret)
	pct := percentAll(secret)
	bearer := func(vs ...string) http.Header { return http.Header{"Authorization": vs} }
	out := []Presentation{
		{Name: "plain", Query: "a=1&access_token=" + enc},
		{Name: "only", Query: "access_token=" + enc},
		{Name: "key %5F", Query: "a=1&access%5Ftoken=" + enc},
		{Name: "key %61", Query: "%61ccess_token=" + enc + "&a=1"},
		{Name: "key all encoded", Query: percentAll("access_token") + "=" + enc},
		{Name: "key lowercase hex", Query: "access%5ftoken=" + enc},
		{Name: "value encoded", Query: "access_token=" + pct + "&a=1"},
		{Name: "semicolon before", Query: "x=1;y=2&access_token=" + enc},
		{Name: "semicolon pair", Query: "x=1;access_token=" + enc},
		{Name: "semicolon after", Query: "access_token=" + enc + ";x=1"},
		{Name: "repeated", Query: "access_token=" + enc + "&a=1&access_token=" + enc},
		{Name: "repeated encoded", Query: "access_token=" + enc + "&access%5Ftoken=" + pct},
		{Name: "mixed case", Query: "Access_Token=" + enc},
		{Name: "upper case encoded", Query: "ACCESS%5FTOKEN=" + enc},
		{Name: "plus elsewhere", Query: "b=c+d&access_token=" + enc},
		{Name: "bad escape elsewhere", Query: "a=%zz&access_token=" + enc},
		{Name: "empty pairs", Query: "&&access_token=" + enc + "&&"},
		{Name: "header", Header: bearer("Bearer " + secret)},
		{Name: "header lowercase scheme", Header: bearer("bearer  " + secret + " ")},
		{Name: "header twice", Header: bearer("Bearer "+secret, "Bearer "+secret)},
		{Name: "header after the backend's", Header: bearer("Bearer backends-own-credential", "Bearer "+secret)},
		{Name: "header and query", Query: "access_token=" + enc, Header: bearer("Bearer " + secret)},
		{Name: "backend's header, token in query", Query: "access_token=" + enc, Header: bearer("Basic YmFja2VuZDpvd24=")},
	}
	if !strings.ContainsAny(secret, "&;#%") {
		// Unencoded: a "+" in it may mean a space or itself.
		out = append(out, Presentation{Name: "raw value", Query: "access_token=" + secret + "&a=1"})
	}
	return out
}

// percentAll percent-encodes every byte of s.
func percentAll(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteByte('%')
		b.WriteByte(hex[s[i]>>4])
		b.WriteByte(hex[s[i]&15])
	}
	return b.String()
}

// Leaks returns the parts of a forwarded request (path, query, header
// values, body, as the test captured them) in which secret can be read:
// as sent, or after undoing percent-encoding (path and query spellings)
// once or twice.
func Leaks(secret string, parts ...string) []string {
	var out []string
	for _, p := range parts {
		if Contains(p, secret) {
			out = append(out, p)
		}
	}
	return out
}

// Contains reports whether s holds secret in any spelling a server might
// decode it to: raw, or percent-decoded once or twice (with "+" read as a
// space or as itself).
func Contains(s, secret string) bool {
	for i := 0; i < 3; i++ {
		if strings.Contains(s, secret) {
			return true
		}
		if q := lenientUnescape(s, true); strings.Contains(q, secret) {
			return true
		}
		s = lenientUnescape(s, false)
	}
	return false
}

// escape is a valid percent-escape.
var escape = regexp.MustCompile(`%[0-9A-Fa-f]{2}`)

// lenientUnescape decodes every valid %XX escape of s and leaves the rest;
// plus makes "+" a space.
func lenientUnescape(s string, plus bool) string {
	if plus {
		s = strings.ReplaceAll(s, "+", " ")
	}
	return escape.ReplaceAllStringFunc(s, func(e string) string {
		b, _ := hex.DecodeString(e[1:])
		return string(b)
	})
}
