package server

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/filestore"
	"github.com/postern/postern/internal/store/memstore"
)

// OpenStore opens the storage engine named by spec:
//
//	file:DIR  the embedded file engine in data directory DIR (durable; the
//	          default, in ./postern-data); "file" alone means the default
//	          directory
//	memory    the in-memory engine (nothing survives a restart)
func OpenStore(spec string) (store.Engine, error) { return openStore(spec, nil) }

// openStore is OpenStore with the logger the engine reports to (nil: the
// default logger).
func openStore(spec string, log *slog.Logger) (store.Engine, error) {
	scheme, rest, _ := strings.Cut(spec, ":")
	switch scheme {
	case "memory", "mem":
		return memstore.New(memstore.Options{}), nil
	case "file":
		return filestore.Open(filestore.Options{Dir: rest, Logger: log})
	}
	return nil, fmt.Errorf("unknown store %q: want file:DIR or memory", spec)
}
