package httpapi

import (
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// HopHeaders are the hop-by-hop headers a proxy removes both ways, as
// net/http/httputil.ReverseProxy lists them.
var HopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// RemoveHopByHop removes from h the headers its Connection lists and
// HopHeaders, as the reverse proxy does.
func RemoveHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range HopHeaders {
		delete(h, f)
	}
}

// UpgradeType is the protocol h switches to, as the reverse proxy reads
// it: Upgrade's value when Connection lists "Upgrade", else "".
func UpgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}
