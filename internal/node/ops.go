package node

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

// listenOps opens --ops-listen, so that a bad address stops the node at
// start; the ops step gives it its handler.
func (n *Node) listenOps() (part, error) {
	if n.cfg.OpsListen == "" {
		return part{}, nil
	}
	o, err := listenOps(n.cfg.OpsListen, n.log)
	if err != nil {
		return part{}, err
	}
	n.ops = o
	return part{start: o.serve, stop: o.shutdown}, nil
}

// buildOps mounts the node's own endpoints on the table: the public
// /healthz and /readyz and, without --ops-listen, the ops
// endpoints behind the ops guard, the status page at "/" included (unless
// channels are at the root). With --ops-listen they are that listener's.
// The status page samples its charts' rates from when the node serves
// until it drains.
func (n *Node) buildOps() (part, error) {
	page := n.statusPage()
	ops := n.opsRoutes(page)
	started := part{start: page.Start, stop: func(context.Context) error { page.Close(); return nil }}
	rt := n.routes
	rt.Add(httpapi.Route{Pattern: "/healthz", Ops: true, Handler: ops})
	rt.Add(httpapi.Route{Pattern: "/readyz", Ops: true, Handler: httpapi.Handle(n.serveTerseReady, nil)})
	if n.ops != nil {
		n.ops.http.Handler = n.metrics.Wrap(ops)
		return started, nil
	}
	guarded := httpapi.Handle(func(w http.ResponseWriter, r *http.Request) error {
		if err := n.allowOps(r); err != nil {
			httpapi.SetRoute(w, "ops.forbidden")
			return err
		}
		ops.ServeHTTP(w, r)
		return nil
	}, nil)
	rt.Add(httpapi.Route{Pattern: "/metrics", Ops: true, Handler: guarded})
	rt.Handle("/ops/", guarded)
	rt.Handle(web.PagePath, guarded) // the page and its status
	if !n.cfg.Channels.AtRoot {
		rt.Handle("/", guarded)
	}
	return started, nil
}

// opsRoutes returns the table of the ops endpoints, unguarded: what
// --ops-listen serves, and what the public address serves behind the
// guard.
func (n *Node) opsRoutes(page *web.Web) *httpapi.Routes {
	rt := httpapi.NewRoutes(nil)
	httpapi.MountOps(rt, n.ready, n.registry)
	n.members.mount(rt)
	page.Mount(rt)
	if !n.cfg.Channels.AtRoot {
		rt.Handle("/", page.Page())
	}
	return rt
}

// underHealth reports a path under /health that no route took: the
// original tunnel relay answered them all with "OK". The node claims
// them before any capability mounts (a relay's X-Server-Name does not
// take them).
func underHealth(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/health") }

func healthOK(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(w, "ops.health")
	w.Header().Set("Content-Type", "text/plain")
	_, err := w.Write([]byte("OK"))
	return err
}

// serveTerseReady is the public /readyz: ready or not, without the reason
// (which may name the store's address).
func (n *Node) serveTerseReady(w http.ResponseWriter, r *http.Request) error {
	httpapi.SetRoute(w, "ops.readyz")
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := n.ready(ctx); err != nil {
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
func (n *Node) allowOps(r *http.Request) error {
	res := opsResource(r.URL.Path)
	if p := n.cfg.Policy; p.Enabled() {
		if p.Allow(r, auth.Ops, res) {
			return nil
		}
		return httpapi.Errorf(http.StatusForbidden, "forbidden: %s needs a token granted ops on %s (or serve it on --ops-listen)", r.URL.Path, res)
	}
	if ratelimit.FromThisHost(r, n.cfg.TrustedProxies) && localHost(r.Host) {
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

// listenOps opens addr, so that a bad address stops the node at start.
func listenOps(addr string, log *slog.Logger) (*opsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ops listen: %w", err)
	}
	return &opsServer{ln: ln, http: &http.Server{
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}, nil
}

// serve starts serving in a goroutine that shutdown waits for. (The
// handler was set after the listener opened: the ops endpoints show every
// part of the node.)
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
