//go:build !(linux && (amd64 || arm64 || riscv64 || loong64 || ppc64le || s390x))

package channels

// sendRing: io_uring is used on Linux on the 64-bit architectures whose
// system call numbers for it are the common ones (425, 426); elsewhere the
// pool writes with write(2).
type sendRing struct{}

func newSendRing(int) *sendRing { _ = useRings; return nil }

func (*sendRing) send([]pendingWrite) bool { return false }

func (*sendRing) close() {}
