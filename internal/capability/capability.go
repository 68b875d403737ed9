// Package capability is the contract between a postern node
// (internal/node) and the parts it assembles: the cores (queue, broker,
// relay hubs) and the capabilities on them (tunnels, inbox, channels,
// relay, expose). It owns Deps, what the node hands to every part, the
// same way: a part is built with New(core, Options, Deps), where Options
// is the part's own configuration (documented Default* values and one
// Validate) and Deps is what every part shares.
//
// A capability then mounts its routes on the node's one routing table
// (httpapi.Routes) and stops with an idempotent, draining
// Shutdown(ctx); the node stops the parts in the reverse of the order it
// built them.
package capability

import (
	"io"
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/cluster"
	"github.com/postern/postern/internal/store"
)

// Deps is what a node hands to each of its parts. The zero value is a
// part alone: no metrics exported, slog.Default() logs, no scoped tokens,
// no other nodes.
type Deps struct {
	// Registry receives the part's metrics; nil: not exported. Every
	// part registers its own collectors on it (see Register).
	Registry prometheus.Registerer
	// Logger receives the part's logs; nil: slog.Default() (see Log).
	Logger *slog.Logger
	// Policy holds postern's scoped tokens, honoured by every capability
	// beside its seed's own auth; nil: none.
	Policy *auth.Policy
	// Directory lists where names (relay backends, expose agents) live
	// across the nodes sharing an engine; nil: this node alone.
	Directory store.Directory
	// Cluster signs the forwarding mark of requests this node sends to
	// another; nil: marks are not signed (a node without a secret).
	Cluster *cluster.Keys
	// TrustedProxies are the proxies whose X-Forwarded-For names the
	// client.
	TrustedProxies []netip.Prefix
}

// Log returns the logger to use: Logger, or slog.Default().
func (d Deps) Log() *slog.Logger {
	if d.Logger == nil {
		return slog.Default()
	}
	return d.Logger
}

// Register registers cs on Registry; without one it does nothing.
func (d Deps) Register(cs ...prometheus.Collector) {
	if d.Registry != nil {
		d.Registry.MustRegister(cs...)
	}
}

// Discard is Deps whose logs go nowhere: for tests and tools.
func Discard() Deps {
	return Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// Default sets *p to def when *p is its type's zero value: how an
// Options.Validate fills the settings left zero that have a default.
func Default[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}
