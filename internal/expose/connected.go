package expose

import (
	"context"

	"github.com/postern/postern/internal/expose/brickchain"
)

// Connected reports whether an agent is connected as name, on this node
// or (with a node directory) on another: what the node asks before it
// has a certificate issued for NAME.<domain>, so that only names in use
// cost the certificate authority anything.
func (s *Service) Connected(ctx context.Context, name string) (bool, error) {
	if !validName(name) && !brickchain.IsClientID(name) {
		return false, nil
	}
	return s.hub.Connected(ctx, name)
}
