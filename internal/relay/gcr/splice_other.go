//go:build !linux

package gcr

import "net"

// spliceSupported: elsewhere a body is read through the buffer (see
// splice.go).
const spliceSupported = false

type socketProgress struct{}

func progressOf(*net.TCPConn) socketProgress { return socketProgress{} }
