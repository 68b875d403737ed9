package tunnel

import (
	"fmt"
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

// IDRule states what a tunnel id may be.
const IDRule = "a tunnel id is 1 to 1024 characters of A-Z a-z 0-9 - _"

// whyMalformed says which rule a path that parseRoute refused breaks.
func whyMalformed(path, prefix string) string {
	rest, ok := strings.CutPrefix(path, prefix)
	if !ok {
		return "tunnel routes start with " + prefix
	}
	id, rest, _ := strings.Cut(rest, "/")
	if !ValidID(id) {
		if len(id) > MaxIDLen {
			return fmt.Sprintf("%s (this one has %d)", IDRule, len(id))
		}
		return fmt.Sprintf("%s (not %q)", IDRule, id)
	}
	midText, _, _ := strings.Cut(rest, "/")
	switch midText {
	case "poll", "len", "all":
		return fmt.Sprintf("/t/ID/%s takes nothing after it (no trailing slash)", midText)
	}
	if _, err := store.ParseID(midText); err != nil {
		return fmt.Sprintf("%q is no route of a tunnel: after /t/ID come poll, len, all or a message id such as 1764627000000-0", midText)
	}
	return "the routes of a message are /t/ID/MID, /t/ID/MID/reply and /t/ID/MID/reply/poll"
}
