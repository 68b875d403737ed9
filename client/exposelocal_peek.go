package client

import (
	"net"

	"github.com/postern/postern/internal/connpeek"
)

// idleClosed reports whether the local service closed c, or sent on it
// unasked, while it was idle. Where a socket cannot be peeked at, such a
// close is noticed when the request sent on it gets no answer, and a
// request without a body is then sent again on a new connection (see
// pair.exchange).
func idleClosed(c net.Conn) bool { return connpeek.IdleClosed(c) }
