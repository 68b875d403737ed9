package server

import (
	"fmt"
	"strings"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/memstore"
)

// OpenStore opens the storage engine named by spec:
//
//	memory    the in-memory engine (nothing survives a restart)
func OpenStore(spec string) (store.Engine, error) {
	scheme, _, _ := strings.Cut(spec, ":")
	switch scheme {
	case "memory", "mem":
		return memstore.New(memstore.Options{}), nil
	}
	return nil, fmt.Errorf("unknown store %q: want memory", spec)
}
