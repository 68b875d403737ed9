package channels

import (
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/postern/postern/internal/httpapi"
)

// Wire-exact answers of pinghub. Its handlers wrote their errors with
// http.Error, which ends the text with a newline (writeError adds it).
var (
	errPathUTF8   = &httpapi.Error{Status: http.StatusBadRequest, Message: "Error: bad request. Path must be valid Unicode (UTF-8)."}
	errPathLength = &httpapi.Error{Status: http.StatusBadRequest, Message: "Error: bad request. Path length must be 1-256 Unicode characters (UTF-8)."}
	// errMethod is its router's answer to a method it had no route for
	// (gorilla/mux): a 405 without a body. postern adds Allow.
	errMethod = httpapi.MethodNotAllowed(http.MethodGet, http.MethodPost)
	// A handshake gorilla/websocket refused: the status text as the body,
	// and the version it speaks.
	errHandshake       = (&httpapi.Error{Status: http.StatusBadRequest, Message: http.StatusText(http.StatusBadRequest)}).WithHeader("Sec-Websocket-Version", "13")
	errHandshakeMethod = (&httpapi.Error{Status: http.StatusMethodNotAllowed, Message: http.StatusText(http.StatusMethodNotAllowed)}).WithHeader("Sec-Websocket-Version", "13")
)

// writeError writes e as pinghub did: http.Error's text and newline,
// except for its router's bodiless 405.
func writeError(w http.ResponseWriter, r *http.Request, e *httpapi.Error) {
	if e == errMethod {
		h := w.Header()
		for k, v := range e.Header {
			h[k] = v
		}
		w.WriteHeader(e.Status)
		return
	}
	cp := *e
	if n := len(cp.Details); n > 0 {
		cp.Details = append(cp.Details[:n-1:n-1], cp.Details[n-1]+"\n")
	} else {
		cp.Message += "\n"
	}
	httpapi.WritePlain(w, r, &cp)
}

// redirect returns where pinghub's router sent a request whose channel
// path is not in canonical form ("//a", "/x/../a", "/a/./b"): the same URL
// with the path cleaned (a trailing slash kept), the query included.
func redirect(r *http.Request, mount string) (string, bool) {
	name, ok := strings.CutPrefix(r.URL.Path, mount)
	if !ok {
		return "", false
	}
	clean := cleanPath(name)
	if clean == name {
		return "", false
	}
	u := *r.URL
	u.Path, u.RawPath = mount+clean, ""
	return u.String(), true
}

// cleanPath is gorilla/mux's canonical form of a path: path.Clean, with a
// trailing slash kept.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

// checkHandshake checks an upgrade request as gorilla/websocket did before
// the origin: the method, then the protocol version.
func checkHandshake(r *http.Request) *httpapi.Error {
	if r.Method != http.MethodGet {
		return errHandshakeMethod
	}
	if r.Header.Get("Sec-Websocket-Version") != "13" {
		return errHandshake
	}
	return nil
}

// validKey reports whether the handshake carries one Sec-WebSocket-Key of
// 16 bytes in base64, which gorilla/websocket checked after the origin.
func validKey(r *http.Request) bool {
	keys := r.Header.Values("Sec-Websocket-Key")
	if len(keys) != 1 {
		return false
	}
	b, err := base64.StdEncoding.DecodeString(keys[0])
	return err == nil && len(b) == 16
}

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
