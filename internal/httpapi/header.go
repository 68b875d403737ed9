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
