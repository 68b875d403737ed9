package client

import (
	"net"

	"github.com/postern/postern/internal/connpeek"
)

// closedWhileIdle reports whether the backend closed c, or sent on it
// unasked, while it was idle; a connection it reports is not used again.
// Where a socket cannot be peeked at, such a close is noticed when the
// request sent on it fails, and the request is sent again on a new one
// when that is safe (see directBackend.RoundTrip).
func closedWhileIdle(c net.Conn) bool { return connpeek.IdleClosed(c) }
