//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package channels

import "net"

// waitReadable is a no-op where the socket cannot be peeked at; the first
// read then simply waits in the websocket library.
func waitReadable(net.Conn) {}
