package httpapi

import (
	"net/http"
	"net/textproto"
	"strings"
)

// HasToken reports whether a header's values, read as comma-separated
// token lists (Connection: keep-alive, Upgrade), hold token, in any case.
func HasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

// IsWebsocketUpgrade reports whether h asks for a websocket.
func IsWebsocketUpgrade(h http.Header) bool {
	return HasToken(h["Connection"], "upgrade") && HasToken(h["Upgrade"], "websocket")
}

// StoredContentType is r's Content-Type for a message kept as it came: a
// common one is the program's own string rather than the one net/http
// allocated for the request, so that a stored message does not keep that
// allocation alive (16 bytes and an object of the three a memory-engine
// message holds).
func StoredContentType(r *http.Request) string {
	v := r.Header.Get("Content-Type")
	switch v {
	case "text/plain":
		return "text/plain"
	case "text/plain; charset=utf-8":
		return "text/plain; charset=utf-8"
	case "application/json":
		return "application/json"
	case "application/octet-stream":
		return "application/octet-stream"
	case "application/x-www-form-urlencoded":
		return "application/x-www-form-urlencoded"
	}
	return v
}
