package channels

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/postern/postern/internal/httpapi"
)

// Wire-exact answers of pinghub.
var (
	errPathUTF8   = &httpapi.Error{Status: http.StatusBadRequest, Message: "Error: bad request. Path must be valid Unicode (UTF-8)."}
	errPathLength = &httpapi.Error{Status: http.StatusBadRequest, Message: "Error: bad request. Path length must be 1-256 Unicode characters (UTF-8)."}
)

// postern's own answers.
var (
	errBodyUTF8   = &httpapi.Error{Status: http.StatusBadRequest, Message: "Error: bad request. Message must be valid Unicode (UTF-8)."}
	errOrigin     = &httpapi.Error{Status: http.StatusForbidden, Message: "Error: forbidden. Origin not allowed."}
	errSince      = &httpapi.Error{Status: http.StatusBadRequest, Message: "Error: bad request. since must be a message id (<ms>-<seq>), 0 or now."}
	errPostTooBig = &httpapi.Error{Status: http.StatusRequestEntityTooLarge, Message: "Error: request entity too large."}
)

// channelPath returns the channel named by a request path: what follows
// the mount prefix, leading '/' included. The request path is already
// percent-decoded ("%2F" counts as '/').
func channelPath(path, mount string) (string, *httpapi.Error) {
	name, ok := strings.CutPrefix(path, mount)
	if !ok {
		return "", errPathLength
	}
	return name, validPath(name)
}

// validPath checks a channel name: valid UTF-8, 1 to 256 runes.
func validPath(name string) *httpapi.Error {
	if !utf8.ValidString(name) {
		return errPathUTF8
	}
	if n := utf8.RuneCountInString(name); n < 1 || n > MaxPathRunes {
		return errPathLength
	}
	return nil
}

// origin is a normalised scheme://host:port.
type origin struct{ scheme, host, port string }

var errOriginSyntax = errors.New("want scheme://host[:port]")

func parseOrigin(s string) (origin, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.Scheme == "" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return origin{}, errOriginSyntax
	}
	o := origin{scheme: strings.ToLower(u.Scheme), host: strings.ToLower(u.Hostname()), port: u.Port()}
	if o.host == "" {
		return origin{}, errOriginSyntax
	}
	if o.port == "" {
		switch o.scheme {
		case "http", "ws":
			o.port = "80"
		case "https", "wss":
			o.port = "443"
		}
	}
	return o, nil
}

// originChecker allows requests whose Origin is one of a list.
type originChecker struct{ allowed []origin }

func newOriginChecker(list []string) *originChecker {
	oc := &originChecker{}
	for _, s := range list {
		if o, err := parseOrigin(s); err == nil {
			oc.allowed = append(oc.allowed, o)
		}
	}
	return oc
}

// allow reports whether r may subscribe or publish: always when no origin
// is configured, when the request has no Origin header, or when the Origin
// names the host the request was sent to (same origin: postern's own
// pages).
func (oc *originChecker) allow(r *http.Request) bool {
	if len(oc.allowed) == 0 {
		return true
	}
	vals := r.Header.Values("Origin")
	if len(vals) == 0 {
		return true
	}
	if len(vals) > 1 {
		return false
	}
	o, err := parseOrigin(vals[0])
	if err != nil {
		return false // "null" and other opaque origins
	}
	if sameHost(o, r.Host) {
		return true
	}
	for _, a := range oc.allowed {
		if a == o {
			return true
		}
	}
	return false
}

// broadcastOnly reports whether websocket clients may not publish on the
// channel name.
func (c *Channels) broadcastOnly(name string) bool {
	for _, p := range c.opts.BroadcastOnly {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// sameHost reports whether o names host (a request's Host header).
func sameHost(o origin, host string) bool {
	h, p, err := net.SplitHostPort(host)
	if err != nil {
		h, p = host, ""
	}
	if p == "" {
		return false // without a port the scheme decides; leave it to the list
	}
	return strings.EqualFold(strings.Trim(h, "[]"), o.host) && p == o.port
}
