package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/postern/postern/internal/store"
)

// writeRefuser is an engine that can say that it refuses writes while it
// still answers reads (the file engine on a read-only data directory, or
// a full disk).
type writeRefuser interface {
	WriteError() error
}

// readiness is /readyz's verdict: nil when the node takes traffic. A node
// is not ready while it drains, when its store does not answer, or when
// the store refuses writes (reads alone are not a working node: a load
// balancer should send producers elsewhere).
func readiness(ctx context.Context, draining bool, st store.Engine) error {
	if draining {
		return errors.New("draining")
	}
	if err := st.Ping(ctx); err != nil {
		return fmt.Errorf("%s store: %w", st.Name(), err)
	}
	if w, ok := st.(writeRefuser); ok {
		if err := w.WriteError(); err != nil {
			return fmt.Errorf("writes refused: %w", err)
		}
	}
	return nil
}
