package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/ratelimit"
	"github.com/postern/postern/internal/web"
)

// The node's operational endpoints (/metrics, /ops/*, the status page and
// /_postern/status, /readyz with its reason) are served
//
//   - on Config.OpsListen, when set, to whoever reaches that address, and
//     not at all on the public address;
//   - otherwise on the public address, to requests granted ops on their
//     resource (/ops/metrics, /ops/nodes, /ops/status) by the token file,
//     or, without a token file, to clients on this host (a loopback
//     address, not passed on by a proxy that is not trusted, with a Host
//     that names this host, so a web page elsewhere cannot read them by
//     DNS rebinding).
//
// The public /healthz says the process is up, and the public /readyz only
// ready or not ready.

// opsRouter returns the router of the ops endpoints, unguarded: what
// --ops-listen serves, and what the public address serves behind the
// guard.
func (s *Server) opsRouter() *httpapi.Router {
	mux := httpapi.NewRouter()
	httpapi.MountOps(mux, s.ready, s.registry)
	s.nodes.mount(mux)
	page := s.statusPage()
	page.Mount(mux)
	s.page = page
	if !s.cfg.Channels.AtRoot {
		home := page.Page()
		mux.Fallback(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/" {
				home.ServeHTTP(w, r)
				return
			}
			notFound.ServeHTTP(w, r)
		}))
	}
	return mux
}

// mountPublicOps registers the public /healthz and /readyz on mux and,
// without --ops-listen, the guarded ops endpoints; it returns the handler
// of the status page at "/" (nil when "/" is not the page's).
func (s *Server) mountPublicOps(mux *httpapi.Router, ops http.Handler) http.Handler {
	mux.Handle("/healthz", ops)
	mux.Handle("/readyz", httpapi.Handle(s.serveTerseReady, nil))
	if s.cfg.OpsListen != "" {
		return nil
	}
	guarded := httpapi.Handle(func(w http.ResponseWriter, r *http.Request) error {
		if err := s.allowOps(r); err != nil {
			httpapi.SetRoute(r, "ops.forbidden")
			return err
		}
		ops.ServeHTTP(w, r)
		return nil
	}, nil)
	mux.Handle("/metrics", guarded)
	mux.Handle("/ops/", guarded)
	mux.Handle(web.PagePath, guarded) // the page and its status
	if s.cfg.Channels.AtRoot {
		return nil
	}
	return guarded
}

// serveTerseReady is the public /readyz: ready or not, without the reason
// (which may name the store's address).
func (s *Server) serveTerseReady(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(r, "ops.readyz")
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return httpapi.Errorf(http.StatusServiceUnavailable, "not ready")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err := w.Write([]byte("ok"))
	return err
}

// opsResource is the resource an ops path is granted by.
func opsResource(path string) string {
	switch {
	case path == "/metrics":
		return "/ops/metrics"
	case strings.HasPrefix(path, "/ops/"):
		return path
	}
	return "/ops/status"
}

// allowOps decides whether r may read an ops endpoint on the public
// address.
func (s *Server) allowOps(r *http.Request) error {
	res := opsResource(r.URL.Path)
	if p := s.cfg.Policy; p.Enabled() {
		if p.Allow(r, auth.Ops, res) {
			return nil
		}
		return httpapi.Errorf(http.StatusForbidden, "forbidden: %s needs a token granted ops on %s (or serve it on --ops-listen)", r.URL.Path, res)
	}
	if ratelimit.FromThisHost(r, s.cfg.RateLimit.TrustedProxies) && localHost(r.Host) {
		return nil
	}
	return httpapi.Errorf(http.StatusForbidden, "forbidden: without --token-file, %s is served to this host only (serve it on --ops-listen, or grant ops in a token file)", r.URL.Path)
}

// localHost reports whether a Host header names this host: localhost, a
// name under .localhost, or a loopback address.
func localHost(hostport string) bool {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.Unmap().IsLoopback()
}

// opsServer is the HTTP server of --ops-listen.
type opsServer struct {
	ln     net.Listener
	http   *http.Server
	served chan error
}

// listenOps opens --ops-listen, so that a bad address stops the node at
// start.
func listenOps(addr string, h http.Handler, log *slog.Logger) (*opsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ops listen: %w", err)
	}
	return &opsServer{ln: ln, http: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}, nil
}

// serve starts serving in a goroutine that shutdown waits for.
func (o *opsServer) serve() {
	o.served = make(chan error, 1)
	go func() { o.served <- o.http.Serve(o.ln) }()
}

// shutdown stops the ops server (closing its listener if it never
// served) and waits for it.
func (o *opsServer) shutdown(ctx context.Context) error {
	err := o.http.Shutdown(ctx)
	if o.served == nil {
		o.ln.Close()
		return err
	}
	if serr := <-o.served; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
