//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package connpeek

import "net"

// IdleClosed cannot peek at a socket here and answers false: a connection
// closed while idle is noticed when the request sent on it fails, and the
// caller sends it again on a new one when that is safe.
func IdleClosed(net.Conn) bool { return false }
