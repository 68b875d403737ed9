package node

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/memstore"
	"github.com/postern/postern/internal/store/redisstore"
)

// StoreOptions tune the engine OpenStore opens.
type StoreOptions struct {
	// Logger receives the engine's logs.
	Logger *slog.Logger
	// RedisWaitReplicas and RedisWaitTimeout are the Redis engine's
	// WaitReplicas and WaitTimeout (see redisstore.Options).
	RedisWaitReplicas int
	RedisWaitTimeout  time.Duration
}

// OpenStore opens the storage engine named by spec:
//
//	file:DIR                                 the embedded file engine in data directory DIR (durable; the
//	                                         default, in postern-data); "file" alone means postern-data
//	memory                                   the in-memory engine (nothing survives a restart)
//	redis://[user:pass@]host:port/db         Redis (or Redis Cluster), shared by many nodes
//	rediss://[user:pass@]host:port/db        the same over TLS
//	redis-sentinel://host:port[,host:port...]/master[/db]
//	                                         the Redis master that these sentinels name, followed
//	                                         through failovers
//
// Redis URLs take the query parameters prefix (key prefix, default
// "postern:"), addr (more Cluster nodes, or sentinels, to start from) and
// master_set (the sentinels' master name, for a redis:// URL naming
// sentinels); see redisstore.Open.
func OpenStore(spec string, o StoreOptions) (store.Engine, error) {
	scheme, rest, _ := strings.Cut(spec, ":")
	isRedis := scheme == "redis" || scheme == "rediss" || scheme == "redis-sentinel"
	if o.RedisWaitReplicas != 0 && !isRedis {
		return nil, fmt.Errorf("--redis-wait-replicas needs a Redis store, not %q: leave it 0, or use --store redis://...", redact(spec))
	}
	switch scheme {
	case "memory", "mem":
		return memstore.New(memstore.Options{}), nil
	case "file":
		return filestore.Open(filestore.Options{Dir: rest, Logger: o.Logger})
	case "redis", "rediss", "redis-sentinel":
		return redisstore.Open(spec, redisstore.Options{
			Logger:       o.Logger,
			WaitReplicas: o.RedisWaitReplicas,
			WaitTimeout:  o.RedisWaitTimeout,
		})
	}
	return nil, fmt.Errorf("unknown store %q: want file:DIR, memory, redis://host:port/db, rediss://host:port/db or redis-sentinel://host:port/master", redact(spec))
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
