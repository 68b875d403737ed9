//go:build !(linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le))

package main

import (
	"errors"
	"time"
)

// kernelFloor is measured only where the clients read through io_uring.
func kernelFloor(pairs, messages int) (time.Duration, error) {
	return 0, errors.New("kernel floor: needs io_uring")
}
