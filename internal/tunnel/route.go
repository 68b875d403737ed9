package tunnel

import (
	"strings"

	"github.com/postern/postern/internal/store"
)

// MaxIDLen is the longest tunnel id.
const MaxIDLen = 1024

// ValidID reports whether s is a tunnel id: 1 to 1024 of [-A-Za-z0-9_].
func ValidID(s string) bool {
	if len(s) < 1 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// routeKind is one of the tunnel routes.
type routeKind int

const (
	routeTunnel    routeKind = iota // /t/<id>[/]: produce, consume
	routePoll                       // /t/<id>/poll
	routeLen                        // /t/<id>/len
	routeAll                        // /t/<id>/all
	routeMessage                    // /t/<id>/<mid>[/]: status, ack
	routeReply                      // /t/<id>/<mid>/reply[/]
	routeReplyPoll                  // /t/<id>/<mid>/reply/poll[/]
)

// allowed lists the methods each route serves.
var allowed = [...][]string{
	routeTunnel:    {"GET", "POST", "OPTIONS"},
	routePoll:      {"GET", "OPTIONS"},
	routeLen:       {"GET", "OPTIONS"},
	routeAll:       {"DELETE", "OPTIONS"},
	routeMessage:   {"GET", "DELETE", "OPTIONS"},
	routeReply:     {"GET", "POST", "OPTIONS"},
	routeReplyPoll: {"GET", "OPTIONS"},
}

type route struct {
	kind routeKind
	id   string
	mid  store.ID
}

// parseRoute parses a request path that starts with prefix ("/t/"). It
// accepts exactly the original's routes: a trailing '/' is allowed on the
// tunnel, message and reply routes, and refused on poll, len and all.
func parseRoute(path, prefix string) (route, bool) {
	rest, ok := strings.CutPrefix(path, prefix)
	if !ok {
		return route{}, false
	}
	id, rest, _ := strings.Cut(rest, "/")
	if !ValidID(id) {
		return route{}, false
	}
	rt := route{id: id}
	// rest is what followed "<id>/", or "" when nothing did (a trailing
	// slash and no slash look the same here, and both are allowed).
	if rest == "" {
		rt.kind = routeTunnel
		return rt, true
	}
	switch rest {
	case "poll":
		rt.kind = routePoll
		return rt, true
	case "len":
		rt.kind = routeLen
		return rt, true
	case "all":
		rt.kind = routeAll
		return rt, true
	}
	midText, rest, _ := strings.Cut(rest, "/")
	mid, err := store.ParseID(midText)
	if err != nil {
		return route{}, false
	}
	rt.mid = mid
	switch rest {
	case "":
		rt.kind = routeMessage
	case "reply", "reply/":
		rt.kind = routeReply
	case "reply/poll", "reply/poll/":
		rt.kind = routeReplyPoll
	default:
		return route{}, false
	}
	return rt, true
}
