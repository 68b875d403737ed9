package muxconn

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// The access rules an agent asks the server to enforce in front of its
// service travel as headers of its websocket handshake, beside its token.
// All are optional; a server that knows none of them ignores them, an
// agent that sends none gets none.
const (
	// BasicAuthHeader holds "user:password": users must give them (HTTP
	// basic auth) before a request reaches the agent.
	BasicAuthHeader = "X-Postern-Basic-Auth"
	// AllowCIDRHeader holds address ranges or addresses, separated by
	// commas, and may repeat: only users from them are served.
	AllowCIDRHeader = "X-Postern-Allow-Cidr"
	// ResponseHeaderHeader holds "Name: value" and may repeat: the server
	// sets the header on every answer the agent gives.
	ResponseHeaderHeader = "X-Postern-Response-Header"
)

// EnforcedHeader, on the answer to the handshake, lists the access rules
// the server enforces for the agent ("basic-auth allow-cidr"), so that an
// agent never believes itself guarded by a server that ignored its rules
// (one from before them).
const EnforcedHeader = "X-Postern-Access-Rules"

// Rules names the rules a asks for, as EnforcedHeader lists them and
// token grants name them.
func (a Access) Rules() []string {
	var rs []string
	if a.User != "" {
		rs = append(rs, "basic-auth")
	}
	if len(a.Allow) > 0 {
		rs = append(rs, "allow-cidr")
	}
	if len(a.Header) > 0 {
		rs = append(rs, "response-header")
	}
	return rs
}

// Limits of the access rules.
const (
	MaxAllowCIDRs       = 256
	MaxResponseHeaders  = 32
	maxUserBytes        = 256
	maxPasswordBytes    = 1024
	maxHeaderValueBytes = 4096
)

// Access is the access rules of one agent.
type Access struct {
	// User and Password, when User is set, are the basic-auth
	// credentials users must give.
	User, Password string
	// Allow, when not empty, lists the only ranges users are served from.
	Allow []netip.Prefix
	// Header is set on every answer (canonical names).
	Header http.Header
}

// Empty reports whether a asks for nothing.
func (a Access) Empty() bool { return a.User == "" && len(a.Allow) == 0 && len(a.Header) == 0 }

// Write sets a's handshake headers on h.
func (a Access) Write(h http.Header) {
	if a.User != "" {
		h.Set(BasicAuthHeader, a.User+":"+a.Password)
	}
	for _, p := range a.Allow {
		h.Add(AllowCIDRHeader, p.String())
	}
	for k, vs := range a.Header {
		for _, v := range vs {
			h.Add(ResponseHeaderHeader, k+": "+v)
		}
	}
}

// ParseAccess reads the access rules of a handshake's headers. Its
// errors are one line, never quote the password, and say what to send.
func ParseAccess(h http.Header) (Access, error) {
	var a Access
	var err error
	switch vs := h.Values(BasicAuthHeader); len(vs) {
	case 0:
	case 1:
		if a.User, a.Password, err = ParseBasicAuth(vs[0]); err != nil {
			return Access{}, err
		}
	default:
		return Access{}, errors.New("basic auth: give one user:password")
	}
	if a.Allow, err = ParseCIDRs(h.Values(AllowCIDRHeader)); err != nil {
		return Access{}, err
	}
	for _, v := range h.Values(ResponseHeaderHeader) {
		name, value, err := ParseResponseHeader(v)
		if err != nil {
			return Access{}, err
		}
		if a.Header == nil {
			a.Header = http.Header{}
		}
		a.Header.Add(name, value)
	}
	if len(a.Header) > MaxResponseHeaders {
		return Access{}, fmt.Errorf("response headers: at most %d", MaxResponseHeaders)
	}
	return a, nil
}

// ParseBasicAuth reads "user:password": a user of 1 to 256 bytes without
// ":" or control characters, a password of 1 to 1024 bytes without control
// characters (the password may hold ":"), and no white space around the
// whole.
func ParseBasicAuth(s string) (user, password string, err error) {
	user, password, ok := strings.Cut(s, ":")
	switch {
	case !ok || user == "" || password == "":
		return "", "", errors.New("basic auth: want user:password, both not empty")
	case len(user) > maxUserBytes || len(password) > maxPasswordBytes:
		return "", "", fmt.Errorf("basic auth: the user is at most %d bytes, the password at most %d", maxUserBytes, maxPasswordBytes)
	case hasControl(user) || hasControl(password):
		return "", "", errors.New("basic auth: the user and password may not hold control characters")
	case strings.Trim(s, " \t") != s:
		// A header value loses them on the way.
		return "", "", errors.New("basic auth: the user may not start, nor the password end, with white space")
	}
	return user, password, nil
}

// ParseCIDRs reads address ranges ("10.0.0.0/8", "2001:db8::/32") and
// single addresses ("192.0.2.7"), each value a comma-separated list; at
// most MaxAllowCIDRs in all. IPv4-mapped IPv6 ranges are read as IPv4.
func ParseCIDRs(values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if f == "" {
				continue
			}
			if len(out) == MaxAllowCIDRs {
				return nil, fmt.Errorf("allowed addresses: at most %d ranges", MaxAllowCIDRs)
			}
			p, err := parsePrefix(f)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	return out, nil
}

func parsePrefix(f string) (netip.Prefix, error) {
	bad := fmt.Errorf("allowed address %q: want a range such as 10.0.0.0/8 or 2001:db8::/32, or one address", clip(f))
	if !strings.Contains(f, "/") {
		a, err := netip.ParseAddr(f)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, bad
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(f)
	if err != nil {
		return netip.Prefix{}, bad
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, bad
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// ParseResponseHeader reads "Name: value": a header name (RFC 9110 token)
// that is not one of the framing or hop-by-hop headers nor postern's own,
// and a value of printable characters up to 4096 bytes. The name comes
// back canonical.
func ParseResponseHeader(s string) (name, value string, err error) {
	name, value, ok := strings.Cut(s, ":")
	name, value = strings.TrimSpace(name), strings.TrimSpace(value)
	switch {
	case !ok || !validHeaderName(name):
		return "", "", fmt.Errorf("response header %q: want 'Name: value'", clip(s))
	case len(value) > maxHeaderValueBytes || hasControl(value):
		return "", "", fmt.Errorf("response header %s: the value is at most %d bytes without control characters", name, maxHeaderValueBytes)
	}
	name = http.CanonicalHeaderKey(name)
	if reservedHeader(name) {
		return "", "", fmt.Errorf("response header %s: not settable (framing, hop-by-hop and X-Postern- headers are the server's)", name)
	}
	return name, value, nil
}

// reservedHeader reports headers an agent may not set on answers: those
// that frame the message or belong to one hop, and postern's own.
func reservedHeader(name string) bool {
	switch name {
	case "Connection", "Content-Length", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return strings.HasPrefix(name, "X-Postern-")
}

func validHeaderName(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// hasControl reports ASCII control characters (tab excepted) and DEL.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
