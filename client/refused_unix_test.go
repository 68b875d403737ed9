//go:build unix

package client_test

import (
	"net"
	"syscall"
	"testing"
)

// refusedAddr returns a loopback address where connections are refused
// for the whole test: a socket bound to it that does not listen, so that
// no other process (tests run in parallel) can take the port meanwhile.
func refusedAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	in := sa.(*syscall.SockaddrInet4)
	return (&net.TCPAddr{IP: net.IP(in.Addr[:]), Port: in.Port}).String()
}
