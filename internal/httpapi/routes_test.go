package httpapi_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/postern/postern/internal/httpapi"
)

// named answers with its name.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
}

// table is a node-shaped table: a host route for agents, a version route
// on the bare domain, paths, two claims in order, a fallback; limited
// routes are marked by the limit.
func table(fallback bool) *httpapi.Routes {
	limited := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Limited", "yes")
			h.ServeHTTP(w, r)
		})
	}
	rt := httpapi.NewRoutes(limited)
	rt.Add(httpapi.Route{Name: "health", When: func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/health") }, Handler: named("health")})
	rt.Add(httpapi.Route{Host: func(h string) bool { return strings.HasSuffix(h, ".d.test") }, Handler: named("agent")})
	rt.Add(httpapi.Route{Host: func(h string) bool { return h == "d.test" }, Pattern: "/",
		When: func(r *http.Request) bool { return r.Method == "GET" }, Handler: named("version")})
	rt.Handle("/t/", named("tunnels"))
	rt.Handle("/t/special/", named("special"))
	rt.Handle("/inbox", named("inbox"))
	rt.Handle("/", named("home"))
	rt.Add(httpapi.Route{Pattern: "/healthz", Ops: true, Handler: named("healthz")})
	rt.Add(httpapi.Route{Name: "by header", When: func(r *http.Request) bool { return r.Header.Get("X-Server-Name") != "" }, Handler: named("relay")})
	if fallback {
		rt.SetFallback(named("channels"))
	}
	return rt
}

// TestRoutesDispatch: hosts first, then the exact path, the longest
// prefix, the claims in order, the fallback; paths as given.
func TestRoutesDispatch(t *testing.T) {
	cases := []struct {
		method, host, path string
		hdr                string // X-Server-Name
		fallback           bool
		want               string
		limited            bool
	}{
		{"GET", "shop.d.test", "/healthz", "", false, "agent", true}, // an agent's host takes every path
		{"GET", "SHOP.D.TEST.:8080", "/t/x", "", false, "agent", true},
		{"GET", "d.test", "/", "", false, "version", true},
		{"POST", "d.test", "/", "", false, "home", true},      // When refused: on to the paths
		{"GET", "d.test", "/t/x", "", false, "tunnels", true}, // the bare domain's other paths are the paths'
		{"GET", "other", "/t/x", "", false, "tunnels", true},
		{"GET", "other", "/t/special/x", "", false, "special", true}, // longest prefix
		{"GET", "other", "/t/special", "", false, "tunnels", true},
		{"GET", "other", "/inbox", "", false, "inbox", true},
		{"GET", "other", "/inbox/send", "", false, "404 not found", true}, // exact is exact
		{"GET", "other", "/", "", false, "home", true},
		{"GET", "other", "/healthz", "", false, "healthz", false},     // Ops: not limited
		{"GET", "other", "/healthcheck", "rb", false, "health", true}, // claims in order
		{"GET", "other", "/pkg.Svc/Method", "rb", false, "relay", true},
		{"GET", "other", "//t/x", "", false, "404 not found", true}, // never cleaned
		{"GET", "other", "/t/../inbox", "", false, "tunnels", true},
		{"GET", "other", "/nothing", "", true, "channels", true},
		{"GET", "other", "/", "", true, "home", true}, // "/" is the root only, not a catch-all
	}
	for _, c := range cases {
		rt := table(c.fallback)
		r := httptest.NewRequest(c.method, "http://x"+c.path, nil)
		r.Host = c.host
		r.URL.Path = c.path // as the server parsed it, uncleaned
		if c.hdr != "" {
			r.Header.Set("X-Server-Name", c.hdr)
		}
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, r)
		got := w.Body.String()
		if w.Code == 404 {
			got = "404 " + got
		}
		if got != c.want || (w.Header().Get("X-Limited") == "yes") != c.limited {
			t.Errorf("%s %s%s: %q limited=%v, want %q limited=%v", c.method, c.host, c.path, got, w.Header().Get("X-Limited") == "yes", c.want, c.limited)
		}
		if ops := rt.Ops(r); ops != (c.want == "healthz") {
			t.Errorf("%s%s: Ops %v", c.host, c.path, ops)
		}
	}
}

// TestRoutesRefuseMistakes: a table that could not mean what it says
// stops the node at start.
func TestRoutesRefuseMistakes(t *testing.T) {
	h := named("x")
	for name, add := range map[string]func(rt *httpapi.Routes){
		"twice":            func(rt *httpapi.Routes) { rt.Handle("/a", h); rt.Handle("/a", h) },
		"prefix twice":     func(rt *httpapi.Routes) { rt.Handle("/a/", h); rt.Handle("/a/", h) },
		"relative":         func(rt *httpapi.Routes) { rt.Handle("a", h) },
		"claim without it": func(rt *httpapi.Routes) { rt.Add(httpapi.Route{Handler: h}) },
		"path with When": func(rt *httpapi.Routes) {
			rt.Add(httpapi.Route{Pattern: "/a", When: func(*http.Request) bool { return true }, Handler: h})
		},
		"no handler": func(rt *httpapi.Routes) { rt.Add(httpapi.Route{Pattern: "/a"}) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			add(httpapi.NewRoutes(nil))
		})
	}
}

func TestHostOf(t *testing.T) {
	for in, want := range map[string]string{"Shop.Example.COM": "shop.example.com", "a.b:8080": "a.b", "a.b.": "a.b", "a.b.:80": "a.b", "[::1]:80": "::1", "": ""} {
		if got := httpapi.HostOf(in); got != want {
			t.Errorf("HostOf(%q) = %q, want %q", in, got, want)
		}
	}
}
