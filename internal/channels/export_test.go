package channels

import "time"

// SetWriterLinger shortens how long websocket writers wait for more
// messages, so that tests exercise their exit and restart; call it before
// any session starts and the returned func after all ended.
func SetWriterLinger(d time.Duration) (restore func()) {
	old := writerLinger
	writerLinger = d
	return func() { writerLinger = old }
}

// OnWriterLetGo makes f run each time a websocket writer exits for lack of
// messages; same rules as SetWriterLinger.
func OnWriterLetGo(f func()) (restore func()) {
	old := writerLetGo
	writerLetGo = f
	return func() { writerLetGo = old }
}

// UseOwnWriters makes every websocket session write through a writer
// goroutine of its own, as TLS connections do, instead of the writer
// pool; same rules as SetWriterLinger.
func UseOwnWriters() (restore func()) {
	old := fastWrites
	fastWrites = false
	return func() { fastWrites = old }
}

// UseWriteCalls makes the writer pool write with one write(2) per frame,
// as where the kernel has no io_uring, instead of sending each batch's
// first frames in one io_uring submission; same rules as SetWriterLinger.
func UseWriteCalls() (restore func()) {
	old := useRings
	useRings = false
	return func() { useRings = old }
}

// RingsMade is how many io_uring send rings writer pools have set up.
func RingsMade() int64 { return ringsMade.Load() }
