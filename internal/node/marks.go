package node

import (
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/cluster"
	"github.com/postern/postern/internal/relay"
)

// errNoClusterSecret stops a node that would forward requests to other
// nodes without a way to prove it is one.
var errNoClusterSecret = errors.New("nodes on this store forward requests to each other: set --cluster-secret " +
	"(or POSTERN_CLUSTER_SECRET) to the same random string of 16 or more characters on every node " +
	"(openssl rand -hex 32 makes one), or --cluster-insecure if nothing but postern nodes can reach them")

// markGuard decides, for every request, whether its forwarding mark
// (X-Postern-Forwarded) comes from a node: with a cluster secret only a
// mark that verifies stays; without one, marks stay only when the node
// forwards (--cluster-insecure, the mark then proves nothing and grants
// nothing); a node that does not forward takes none. A mark that does not
// stay is removed before any front door sees the request, counted, and
// logged (at most one line a second); the request is then served as a
// direct one, but from local backends only (relay.WithLocalOnly), as a
// request a node forwarded would be: two nodes that do not share a secret
// never pass a request back and forth.
type markGuard struct {
	keys       *cluster.Keys // nil: no secret
	forwarding bool
	log        *slog.Logger
	dropped    *prometheus.CounterVec

	mu         sync.Mutex
	lastLog    time.Time
	suppressed int
}

func newMarkGuard(keys *cluster.Keys, forwarding bool, deps capability.Deps) *markGuard {
	g := &markGuard{
		keys: keys, forwarding: forwarding, log: deps.Log(),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_cluster_marks_dropped_total",
			Help: "Requests whose X-Postern-Forwarded mark was ignored because it did not come from a node, by reason.",
		}, []string{"reason"}),
	}
	deps.Register(g.dropped)
	return g
}

func (g *markGuard) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if vs := r.Header.Values(cluster.Header); len(vs) > 0 && !g.check(r, vs) {
			r.Header.Del(cluster.Header)
			r = r.WithContext(relay.WithLocalOnly(r.Context()))
		}
		next.ServeHTTP(w, r)
	})
}

// check reports whether r's mark stays, counting and logging one that
// does not.
func (g *markGuard) check(r *http.Request, marks []string) bool {
	reason := ""
	switch {
	case len(marks) > 1:
		reason = "repeated"
	case g.keys != nil:
		if _, err := g.keys.Verify(r); err != nil {
			switch {
			case errors.Is(err, cluster.ErrExpired):
				reason = "expired"
			case errors.Is(err, cluster.ErrSignature):
				reason = "signature"
			default:
				reason = "malformed"
			}
		}
	case !g.forwarding:
		reason = "not_forwarding"
	}
	if reason == "" {
		return true
	}
	g.dropped.WithLabelValues(reason).Inc()
	g.mu.Lock()
	now := time.Now()
	if now.Sub(g.lastLog) < time.Second {
		g.suppressed++
		g.mu.Unlock()
		return false
	}
	suppressed := g.suppressed
	g.lastLog, g.suppressed = now, 0
	g.mu.Unlock()
	g.log.Warn("ignored a forwarding mark that does not come from a node", "reason", reason, "remote", r.RemoteAddr,
		"method", r.Method, "path", r.URL.Path, "suppressed_since_last", suppressed)
	return false
}
