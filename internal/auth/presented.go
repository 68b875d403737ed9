package auth

import (
	"net/http"
	"strings"
)

// Presented is one parse of every place a request may carry a postern
// token: each "Authorization: Bearer" header value, and each pair of the
// raw query whose key reads "access_token". Finding the token a request
// presents (Secret, Token) and removing postern's tokens before the request
// is forwarded (Strip) both work from this one parse, so no spelling can be
// accepted by one and missed by the other.
//
// The query is read the way the most lenient server behind postern could
// read it: pairs are separated by "&" and by ";"; a key matches
// "access_token" in any case and after undoing any valid percent-escapes
// and "+"; a value is tried percent-decoded with "+" as a space and, when
// it holds a "+", also with "+" as itself. A query that does not parse
// under stricter rules (bad escapes, empty pairs) is read all the same.
type Presented struct {
	header []string // every Authorization value
	query  string   // the raw query
	cands  []candidate
}

// candidate is one place a token may be: Authorization value number
// header (when query is false), or the query pair query[start:end].
type candidate struct {
	secrets    []string // the value's readings, the most likely first
	fromQuery  bool
	header     int
	start, end int
}

// Find parses h's Authorization values and rawQuery.
func Find(h http.Header, rawQuery string) *Presented {
	p := &Presented{header: h.Values("Authorization"), query: rawQuery}
	for i, v := range p.header {
		if tok, ok := ParseBearer(v); ok {
			p.cands = append(p.cands, candidate{secrets: []string{tok}, header: i})
		}
	}
	for start := 0; start <= len(rawQuery); {
		end := start + strings.IndexAny(rawQuery[start:], "&;")
		if end < start {
			end = len(rawQuery)
		}
		pair := rawQuery[start:end]
		key, value, _ := strings.Cut(pair, "=")
		if strings.EqualFold(unescape(key, true), QueryParam) {
			c := candidate{fromQuery: true, start: start, end: end}
			if v := unescape(value, true); v != "" {
				c.secrets = append(c.secrets, v)
			}
			if strings.Contains(value, "+") {
				if v := unescape(value, false); v != "" {
					c.secrets = append(c.secrets, v)
				}
			}
			if len(c.secrets) > 0 {
				p.cands = append(p.cands, c)
			}
		}
		start = end + 1
	}
	return p
}

// FindIn parses r's Authorization values and raw query.
func FindIn(r *http.Request) *Presented { return Find(r.Header, r.URL.RawQuery) }

// Secret returns the first token presented: an Authorization Bearer value
// before the query.
func (p *Presented) Secret() (string, bool) {
	if len(p.cands) == 0 {
		return "", false
	}
	return p.cands[0].secrets[0], true
}

// Token returns the first presented token that pol knows.
func (p *Presented) Token(pol *Policy) (*Token, bool) {
	if pol == nil {
		return nil, false
	}
	for _, c := range p.cands {
		for _, s := range c.secrets {
			if t, ok := pol.Lookup(s); ok {
				return t, true
			}
		}
	}
	return nil, false
}

// Strip removes every token pol knows from what p parsed: the
// Authorization values that carry one are deleted from h (which must be the
// header p was found in, or a copy of it), and the query is returned
// without the pairs that carry one, the rest byte for byte as it was.
// Credentials pol does not know (the backend's own) are left alone.
func (p *Presented) Strip(pol *Policy, h http.Header) (rawQuery string) {
	known := func(c candidate) bool {
		for _, s := range c.secrets {
			if _, ok := pol.Lookup(s); ok {
				return true
			}
		}
		return false
	}
	var dropHeader []int
	var b strings.Builder
	last, cut := 0, false
	for _, c := range p.cands {
		if !known(c) {
			continue
		}
		if !c.fromQuery {
			dropHeader = append(dropHeader, c.header)
			continue
		}
		b.WriteString(p.query[last:c.start])
		last, cut = c.end+1, true
	}
	if len(dropHeader) > 0 {
		kept := make([]string, 0, len(p.header)-len(dropHeader))
		for i, v := range p.header {
			if !containsInt(dropHeader, i) {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			h.Del("Authorization")
		} else {
			h["Authorization"] = kept
		}
	}
	if !cut {
		return p.query
	}
	if last < len(p.query) {
		b.WriteString(p.query[last:])
	}
	// Removing the last pair leaves its separator behind: drop it.
	return strings.TrimRight(b.String(), "&;")
}

// Strip removes the postern tokens h and rawQuery carry (see
// Presented.Strip) and returns the query without them: the one call every
// front door makes before a request leaves postern.
func (pol *Policy) Strip(h http.Header, rawQuery string) string {
	if pol == nil {
		return rawQuery
	}
	return Find(h, rawQuery).Strip(pol, h)
}

func containsInt(list []int, x int) bool {
	for _, v := range list {
		if v == x {
			return true
		}
	}
	return false
}

// unescape decodes every valid %XX escape of s and keeps any other byte as
// it is; plus also reads "+" as a space.
func unescape(s string, plus bool) string {
	if !strings.ContainsAny(s, "%+") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%' && i+2 < len(s) && ishex(s[i+1]) && ishex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		case c == '+' && plus:
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
