package httpapi

import (
	"net"
	"net/http"
	"sort"
	"strings"
)

// Routes is the whole dispatch of a node in one table: which handler
// answers a request, by host and by path. Every capability mounts its
// entries on it (Mount(routes)); the node builds it and serves it. A
// request goes to the first of
//
//  1. the host routes, in the order added: a route whose Host accepts the
//     request's host (lowercased, without port and trailing dot) and whose
//     Pattern and When, if any, accept the request (an expose agent's
//     host takes every path);
//  2. the path route of exactly its path;
//  3. the path route of the longest prefix of its path (a pattern ending
//     in "/");
//  4. the claims, in the order added: routes with neither host nor
//     pattern, whose When accepts the request (a header naming a relay
//     backend, a path shape no capability owns);
//  5. the fallback: 404, or what SetFallback set (channels at the root).
//
// Paths are matched as given: unlike http.ServeMux the table never cleans
// or redirects a path ("//x", "/a/./b"), as the relays postern replaces
// took paths as they came, and a redirect breaks websocket and POST
// clients. Every handler but the Ops routes' runs behind the limit the
// table was made with (rate limits); Ops routes are the node's own health
// and metrics endpoints, also served on connections beyond the connection
// cap (see Ops).
//
// Mount everything before serving: the table is not safe for changes
// while it serves.
type Routes struct {
	limit    func(http.Handler) http.Handler
	hosts    []*route
	exact    map[string]*route
	prefixes []*route // longest first
	claims   []*route
	fallback *route
}

// Route is one entry of the table.
type Route struct {
	// Host, when set, makes a host route: it takes the requests whose host
	// it accepts (lowercased, without port and trailing dot).
	Host func(host string) bool
	// Pattern is a path ("/x": that path; "/x/": every path under it; "/":
	// the root alone, as every other path nothing takes is the
	// fallback's). A host route without one takes every path; a route
	// with neither host nor pattern is a claim, which needs When.
	Pattern string
	// When, when set, must accept the request too (a method, a header).
	// Only host routes and claims have one.
	When func(*http.Request) bool
	// Ops marks the node's own endpoints (/healthz, /readyz, /metrics):
	// never rate limited, and served on connections beyond the cap.
	Ops bool
	// Name names the route in panics about the table.
	Name    string
	Handler http.Handler
}

type route struct {
	Route
	h http.Handler // Handler, behind the limit unless Ops
}

// NewRoutes returns an empty table whose routes run behind limit (nil:
// none), answering 404 where nothing matches.
func NewRoutes(limit func(http.Handler) http.Handler) *Routes {
	if limit == nil {
		limit = func(h http.Handler) http.Handler { return h }
	}
	rt := &Routes{limit: limit, exact: make(map[string]*route)}
	rt.SetFallback(Handle(func(w http.ResponseWriter, r *http.Request) error {
		SetRoute(w, "not_found")
		return ErrNotFound
	}, nil))
	return rt
}

// Handle adds a path route for pattern: a pattern ending in "/" matches
// every path under it (the longest such prefix wins), any other pattern,
// and "/", matches exactly that path. Adding a pattern twice panics, as with
// http.ServeMux.
func (rt *Routes) Handle(pattern string, h http.Handler) {
	rt.Add(Route{Pattern: pattern, Handler: h})
}

// Add adds r to the table; a route that makes no sense panics (a mistake
// in the node's assembly, found by any test that starts a node).
func (rt *Routes) Add(r Route) {
	e := &route{Route: r, h: r.Handler}
	if !r.Ops {
		e.h = rt.limit(r.Handler)
	}
	name := r.Name
	if name == "" {
		name = r.Pattern
	}
	switch {
	case r.Handler == nil:
		panic("httpapi: route without a handler: " + name)
	case r.Pattern != "" && !strings.HasPrefix(r.Pattern, "/"):
		panic("httpapi: pattern must start with /: " + name)
	case r.Host != nil:
		rt.hosts = append(rt.hosts, e)
	case r.Pattern == "":
		if r.When == nil {
			panic("httpapi: a claim needs When: " + name)
		}
		rt.claims = append(rt.claims, e)
	case r.When != nil:
		panic("httpapi: only host routes and claims have When: " + name)
	case isPrefix(r.Pattern):
		for _, p := range rt.prefixes {
			if p.Pattern == r.Pattern {
				panic("httpapi: pattern registered twice: " + r.Pattern)
			}
		}
		rt.prefixes = append(rt.prefixes, e)
		sort.SliceStable(rt.prefixes, func(i, j int) bool { return len(rt.prefixes[i].Pattern) > len(rt.prefixes[j].Pattern) })
	default:
		if _, dup := rt.exact[r.Pattern]; dup {
			panic("httpapi: pattern registered twice: " + r.Pattern)
		}
		rt.exact[r.Pattern] = e
	}
}

// SetFallback sets the handler for requests nothing else takes; it runs
// behind the limit.
func (rt *Routes) SetFallback(h http.Handler) {
	rt.fallback = &route{Route: Route{Name: "fallback", Handler: h}, h: rt.limit(h)}
}

// lookup returns the route r takes.
func (rt *Routes) lookup(r *http.Request) *route {
	if len(rt.hosts) > 0 {
		host := HostOf(r.Host)
		for _, e := range rt.hosts {
			if e.Host(host) && (e.Pattern == "" || matches(e.Pattern, r.URL.Path)) && (e.When == nil || e.When(r)) {
				return e
			}
		}
	}
	path := r.URL.Path
	if e, ok := rt.exact[path]; ok {
		return e
	}
	for _, e := range rt.prefixes {
		if strings.HasPrefix(path, e.Pattern) {
			return e
		}
	}
	for _, e := range rt.claims {
		if e.When(r) {
			return e
		}
	}
	return rt.fallback
}

func matches(pattern, path string) bool {
	if isPrefix(pattern) {
		return strings.HasPrefix(path, pattern)
	}
	return path == pattern
}

// isPrefix reports a pattern that matches every path under it.
func isPrefix(pattern string) bool { return pattern != "/" && strings.HasSuffix(pattern, "/") }

// Ops reports whether r takes an Ops route.
func (rt *Routes) Ops(r *http.Request) bool { return rt.lookup(r).Ops }

func (rt *Routes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt.lookup(r).h.ServeHTTP(w, r)
}

// HostOf returns a Host header's host, lowercased, without port and
// trailing dot: what host routes are matched against.
func HostOf(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}
