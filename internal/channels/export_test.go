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
