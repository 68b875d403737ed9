package main

// A copy of postern's wire (internal/expose/muxconn.Conn, which the main
// module keeps internal): websocket messages with write gathering. The
// held-header rule matches yamux data-frame headers only; smux writes a
// frame's header and body in one Write, so for smux the conn only gathers.

import (
	"context"
	"encoding/binary"
	"net"
	"sync"

	"github.com/coder/websocket"
)

// yamux frame header: version, type, flags (2), stream id (4), length (4).
const (
	headerSize = 12
	typeData   = 0
)

// MaxMessage is the largest websocket message an end sends.
const MaxMessage = 1 << 20

// gatherConn carries a session over ws as a byte stream cut into binary
// messages. Writes are gathered: what yamux writes while the previous
// message is on its way goes out in the next one, up to MaxMessage, so
// that under load many frames share one message and one flush (group
// commit, no added latency when idle); a data frame's header is always
// sent with its body. At most MaxMessage waits to be sent: beyond it,
// Write blocks. ctx bounds the connection.
func gatherConn(ctx context.Context, ws *websocket.Conn) net.Conn {
	c := &conn{
		Conn: websocket.NetConn(ctx, ws, websocket.MessageBinary), ws: ws, ctx: ctx,
		wake: make(chan struct{}, 1), space: make(chan struct{}, 1), done: make(chan struct{}),
	}
	go c.flush()
	return c
}

type conn struct {
	net.Conn // reads and addresses
	ws       *websocket.Conn
	ctx      context.Context
	wake     chan struct{} // data waits
	space    chan struct{} // the buffer was taken
	done     chan struct{} // closed by Close
	once     sync.Once

	mu     sync.Mutex
	buf    []byte
	spare  []byte
	header [headerSize]byte
	held   bool
	err    error
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && len(c.buf) >= MaxMessage {
		c.mu.Unlock()
		select {
		case <-c.space:
		case <-c.done:
			return 0, net.ErrClosed
		case <-c.ctx.Done():
			return 0, c.ctx.Err()
		}
		c.mu.Lock()
	}
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.held && len(p) == headerSize && p[1] == typeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
		// A data frame's header: it goes with the body that follows.
		copy(c.header[:], p)
		c.held = true
		return len(p), nil
	}
	if c.held {
		c.buf = append(c.buf, c.header[:]...)
		c.held = false
	}
	c.buf = append(c.buf, p...)
	signal(c.wake)
	return len(p), nil
}

// flush sends what was written, in messages of at most MaxMessage bytes.
func (c *conn) flush() {
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		case <-c.ctx.Done():
			return
		}
		c.mu.Lock()
		out := c.buf
		c.buf = c.spare[:0]
		c.mu.Unlock()
		signal(c.space)
		var err error
		for rest := out; len(rest) > 0 && err == nil; {
			n := min(len(rest), MaxMessage)
			err = c.ws.Write(c.ctx, websocket.MessageBinary, rest[:n])
			rest = rest[n:]
		}
		c.mu.Lock()
		if cap(out) <= 4*MaxMessage {
			c.spare = out[:0]
		}
		if err != nil && c.err == nil {
			c.err = err
		}
		c.mu.Unlock()
		if err != nil {
			c.ws.CloseNow()
			return
		}
	}
}

// Read reads the session's bytes, remembering the error that ended them.
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.mu.Unlock()
	}
	return n, err
}
