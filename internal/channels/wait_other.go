//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package channels

import "net"

// waitable reports false where the socket cannot be peeked at: the
// websocket library then reads (and waits) itself.
func waitable(net.Conn) bool { return false }

// waitReadable is never called where nothing is waitable.
func waitReadable(net.Conn) {}
