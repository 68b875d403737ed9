//go:build linux && !(amd64 || arm64 || riscv64 || loong64 || ppc64le)

package main

import "errors"

// Elsewhere than on the little-endian 64-bit architectures the clients
// read with epoll only.

type ringLoop struct{}

func startRing(*wsReaders, []*pollConn, func(int, []byte, frameTimes)) (*ringLoop, error) {
	return nil, errors.New("io_uring reader: not on this architecture")
}
