// Package cluster owns the trust between postern nodes: the forwarding mark
// (X-Postern-Forwarded) that a node puts on a request it forwards to the
// node holding a backend, signed with the secret the nodes share, and its
// verification on arrival.
//
// A mark reads
//
//	<namespace>; node=<node id>; t=<unix seconds>; sig=<base64url HMAC-SHA256>
//
// and its signature covers the namespace, the node id, the time, and the
// request line as the receiving node reads it: method, Host and request
// URI. A mark is valid within Window of its time on the receiving node's
// clock, so a mark copied from one request fits no other, and a recorded
// request can be played again only within the window (forward over TLS,
// an https advertise address, where the network between nodes is not
// trusted). The body is not covered: it streams.
package cluster

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header is the forwarding mark's header.
const Header = "X-Postern-Forwarded"

// DefaultWindow is how far a mark's time may lie from the receiving node's
// clock, either way: forwarding takes milliseconds, the rest is for clocks
// that disagree a little.
const DefaultWindow = 30 * time.Second

// MinSecretLen is the shortest secret New takes.
const MinSecretLen = 16

// Errors of Verify.
var (
	ErrMalformed = errors.New("forwarding mark is malformed")
	ErrExpired   = errors.New("forwarding mark is outside its validity window")
	ErrSignature = errors.New("forwarding mark signature does not verify")
)

// Keys signs and verifies marks with the secret the nodes share.
type Keys struct {
	secret []byte
	node   string
	window time.Duration
	now    func() time.Time
}

// Options configures Keys.
type Options struct {
	// Secret is shared by every node; at least MinSecretLen bytes.
	Secret string
	// Node is this node's id, named in the marks it signs.
	Node string
	// Window is the validity window; zero: DefaultWindow.
	Window time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Validate fills the settings left zero with their defaults and reports
// the first one that makes no sense.
func (o *Options) Validate() error {
	if len(o.Secret) < MinSecretLen {
		return fmt.Errorf("cluster secret is shorter than %d characters", MinSecretLen)
	}
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.Window < 0 {
		return errors.New("cluster mark window must not be negative")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// New returns the keys of a node.
func New(o Options) (*Keys, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return &Keys{secret: []byte(o.Secret), node: o.Node, window: o.Window, now: o.Now}, nil
}

// Mark is a verified mark.
type Mark struct {
	Namespace string
	Node      string
	Time      time.Time
}

// Sign returns the mark for out, a request this node forwards in
// namespace ns, as the receiving node will read it: out.Method, out.Host
// and out.URL.RequestURI().
func (k *Keys) Sign(ns string, out *http.Request) string {
	t := strconv.FormatInt(k.now().Unix(), 10)
	host := out.Host
	if host == "" {
		host = out.URL.Host
	}
	sig := k.sum(ns, k.node, t, out.Method, host, out.URL.RequestURI())
	return ns + "; node=" + escape(k.node) + "; t=" + t + "; sig=" + base64.RawURLEncoding.EncodeToString(sig)
}

// Verify checks the mark r carries (its Header) against r's request line,
// as the server read it.
func (k *Keys) Verify(r *http.Request) (Mark, error) {
	v := r.Header.Get(Header)
	fields := strings.Split(v, ";")
	if len(fields) != 4 {
		return Mark{}, ErrMalformed
	}
	ns := strings.TrimSpace(fields[0])
	var node, t, sig string
	for _, f := range fields[1:] {
		name, val, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok {
			return Mark{}, ErrMalformed
		}
		switch name {
		case "node":
			node = val
		case "t":
			t = val
		case "sig":
			sig = val
		default:
			return Mark{}, ErrMalformed
		}
	}
	secs, err := strconv.ParseInt(t, 10, 64)
	if err != nil || ns == "" || sig == "" {
		return Mark{}, ErrMalformed
	}
	nodeID, ok := unescape(node)
	if !ok {
		return Mark{}, ErrMalformed
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return Mark{}, ErrMalformed
	}
	uri := r.RequestURI
	if uri == "" {
		uri = r.URL.RequestURI()
	}
	if !hmac.Equal(got, k.sum(ns, nodeID, t, r.Method, r.Host, uri)) {
		return Mark{}, ErrSignature
	}
	at := time.Unix(secs, 0)
	if d := k.now().Sub(at); d > k.window || d < -k.window {
		return Mark{}, ErrExpired
	}
	return Mark{Namespace: ns, Node: nodeID, Time: at}, nil
}

// sum is the HMAC of the fields, each followed by a zero byte (no field
// holds one: they come from a request line, a header and this package).
func (k *Keys) sum(fields ...string) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte("postern-forward-v1\x00"))
	for _, f := range fields {
		m.Write([]byte(f))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

// escape makes a node id safe inside a mark: "%", ";", "=", white space
// and control characters are percent-encoded.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' || c == ';' || c == '=' || c <= ' ' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func unescape(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		n, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(n))
		i += 2
	}
	return b.String(), true
}
