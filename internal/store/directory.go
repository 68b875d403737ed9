package store

import (
	"context"
	"time"
)

// Directory is implemented by engines that several nodes share. It records
// which node holds the live connection of a backend or agent, so that a
// request landing on any node can be forwarded to the node that can serve
// it, and which nodes are alive.
//
// Entries expire unless renewed: a node that dies drops out of the
// directory within the TTL it registered with.
type Directory interface {
	// Register records that the backend or agent called name, in namespace
	// ns ("relay", "expose", ...), is connected to the node whose internal
	// base URL is addr, until ttl passes. Registering again renews it.
	Register(ctx context.Context, ns, name, addr string, ttl time.Duration) error
	// Unregister removes the entry for (ns, name, addr), if present.
	Unregister(ctx context.Context, ns, name, addr string) error
	// Lookup returns the addrs of every node with a live entry for
	// (ns, name); several nodes may serve one name.
	Lookup(ctx context.Context, ns, name string) ([]string, error)
	// Heartbeat records that node is alive until ttl passes.
	Heartbeat(ctx context.Context, node NodeInfo, ttl time.Duration) error
	// Nodes lists the nodes whose heartbeat has not expired.
	Nodes(ctx context.Context) ([]NodeInfo, error)
}

// NodeInfo describes one node of a cluster.
type NodeInfo struct {
	// ID is unique per running node.
	ID string
	// Addr is the node's internal base URL ("http://10.0.0.5:8080"), which
	// other nodes use to forward requests to it.
	Addr string
}
