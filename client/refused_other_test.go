//go:build !unix

package client_test

import "testing"

// refusedAddr returns a loopback address where connections are refused:
// one a listener had, now closed (another process may take it meanwhile).
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
