package node

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/memstore"
	"github.com/postern/postern/internal/store/redisstore"
)

// OpenStore opens the storage engine named by spec:
//
//	file:DIR                                 the embedded file engine in data directory DIR (durable; the
//	                                         default, in postern-data); "file" alone means postern-data
//	memory                                   the in-memory engine (nothing survives a restart)
//	redis://[user:pass@]host:port/db         Redis (or Redis Cluster), shared by many nodes
//	rediss://[user:pass@]host:port/db        the same over TLS
//
// Redis URLs take the query parameters prefix (key prefix, default
// "postern:") and addr (more Cluster nodes to start from).
func OpenStore(spec string, log *slog.Logger) (store.Engine, error) {
	scheme, rest, _ := strings.Cut(spec, ":")
	switch scheme {
	case "memory", "mem":
		return memstore.New(memstore.Options{}), nil
	case "file":
		return filestore.Open(filestore.Options{Dir: rest, Logger: log})
	case "redis", "rediss":
		return redisstore.Open(spec, redisstore.Options{Logger: log})
	}
	return nil, fmt.Errorf("unknown store %q: want file:DIR, memory, redis://host:port/db or rediss://host:port/db", redact(spec))
}

// redact hides a password in a store URL.
func redact(spec string) string {
	if at := strings.LastIndexByte(spec, '@'); at >= 0 {
		if i := strings.Index(spec, "://"); i >= 0 && i < at {
			return spec[:i+3] + "***" + spec[at:]
		}
	}
	return spec
}
