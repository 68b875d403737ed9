//go:build !linux

package channels

// sendRing: io_uring is Linux's; elsewhere the pool writes with write(2).
type sendRing struct{}

func newSendRing(int) *sendRing { _ = useRings; return nil }

func (*sendRing) send([]pendingWrite) bool { return false }

func (*sendRing) close() {}
