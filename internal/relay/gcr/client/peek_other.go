//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package client

import "net"

// closedWhileIdle cannot peek at a socket here: a connection the backend
// closed while idle is noticed when the request sent on it fails, and
// sent again on a new one when that is safe (see directBackend.RoundTrip).
func closedWhileIdle(net.Conn) bool { return false }
