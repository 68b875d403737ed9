package httpapi

import (
	"net/http"
	"sort"
	"strings"
)

// Router dispatches requests by path to the front doors. Unlike
// http.ServeMux it never cleans or redirects a path ("//x", "/a/./b"): the
// relays postern replaces took paths as given, and a redirect breaks
// websocket and POST clients.
type Router struct {
	exact    map[string]http.Handler
	prefixes []prefixRoute // longest first
	fallback http.Handler
}

type prefixRoute struct {
	prefix string
	h      http.Handler
}

// NewRouter returns a router that answers 404 where nothing matches.
func NewRouter() *Router {
	return &Router{
		exact: make(map[string]http.Handler),
		fallback: Handle(func(w http.ResponseWriter, r *http.Request) error {
			SetRoute(r, "not_found")
			return ErrNotFound
		}, nil),
	}
}

// Handle registers h for pattern: a pattern ending in "/" matches every path
// under it (the longest such prefix wins), any other pattern matches exactly
// that path. Registering a pattern twice panics, as with http.ServeMux.
func (rt *Router) Handle(pattern string, h http.Handler) {
	if !strings.HasPrefix(pattern, "/") {
		panic("httpapi: pattern must start with /: " + pattern)
	}
	if strings.HasSuffix(pattern, "/") {
		for _, p := range rt.prefixes {
			if p.prefix == pattern {
				panic("httpapi: pattern registered twice: " + pattern)
			}
		}
		rt.prefixes = append(rt.prefixes, prefixRoute{pattern, h})
		sort.SliceStable(rt.prefixes, func(i, j int) bool { return len(rt.prefixes[i].prefix) > len(rt.prefixes[j].prefix) })
		return
	}
	if _, dup := rt.exact[pattern]; dup {
		panic("httpapi: pattern registered twice: " + pattern)
	}
	rt.exact[pattern] = h
}

// Fallback sets the handler for paths nothing else matches.
func (rt *Router) Fallback(h http.Handler) { rt.fallback = h }

// Handler returns the handler for path.
func (rt *Router) Handler(path string) http.Handler {
	if h, ok := rt.exact[path]; ok {
		return h
	}
	for _, p := range rt.prefixes {
		if strings.HasPrefix(path, p.prefix) {
			return p.h
		}
	}
	return rt.fallback
}

func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt.Handler(r.URL.Path).ServeHTTP(w, r)
}
