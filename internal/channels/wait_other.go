//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package channels

import "net"

// waitReadable cannot wait without reading where the socket cannot be
// peeked at: it reports false, and the websocket library reads (and
// waits) itself.
func waitReadable(net.Conn) bool { return false }
