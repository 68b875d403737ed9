//go:build !linux

package main

import (
	"sync"
	"time"
)

// Elsewhere than on Linux each subscriber connection is read by a
// goroutine of its own.

// wsReaders reads the frames of a set of subscriber connections.
type wsReaders struct {
	conns []*wsClient
	wg    sync.WaitGroup
}

// startReaders takes over conns and calls frame for every data frame;
// frames of one connection come from one goroutine, in order. payload is
// valid only during the call. Pings are answered. stop closes everything.
func startReaders(conns []*wsClient, frame func(i int, payload []byte, at frameTimes)) (*wsReaders, error) {
	r := &wsReaders{conns: conns}
	for i, c := range conns {
		r.wg.Go(func() {
			for {
				b, err := c.next()
				if err != nil {
					return
				}
				now := time.Now()
				frame(i, b, frameTimes{now, now})
			}
		})
	}
	return r, nil
}

// frameTimes is when a frame reached the subscriber: here both are when
// it was read.
type frameTimes struct{ arrived, read time.Time }

// stop closes every connection and waits for the readers.
func (r *wsReaders) stop() {
	closeAll(r.conns)
	r.wg.Wait()
}
