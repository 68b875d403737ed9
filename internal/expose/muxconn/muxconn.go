// Package muxconn owns the native expose agent's wire: a yamux session
// carried in binary websocket messages, with the yamux configuration both
// ends share. The server (internal/expose) and the agent (client.Expose)
// both build on it, so the two ends cannot drift apart.
//
// yamux rather than xtaci/smux, by benchmark (bench/mux): over a bare
// websocket smux was ahead on request round trips by less than the 10% a
// swap would need to be worth it and behind on one-stream throughput, and
// over this package's gathered wire yamux is ahead on every figure.
package muxconn

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
)

// Config is the yamux configuration of both ends: keep-alives every
// keepAlive, and a stream window of window bytes.
func Config(keepAlive time.Duration, window int) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = keepAlive
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.MaxStreamWindowSize = uint32(window)
	cfg.StreamOpenTimeout = 30 * time.Second
	cfg.StreamCloseTimeout = 5 * time.Minute
	cfg.LogOutput = io.Discard
	return cfg
}

// MaxMessage is the largest websocket message an end sends.
const MaxMessage = 1 << 20

// CloseFlushTimeout bounds how long Close waits for what was written to be
// sent before it closes the websocket.
const CloseFlushTimeout = time.Second

// ReadLimit is the websocket message limit of both ends.
func ReadLimit() int64 { return MaxMessage + 64<<10 }

// yamux frame header: version, type, flags (2), stream id (4), length (4).
const (
	headerSize = 12
	typeData   = 0
)

// Conn carries a yamux session over ws as a byte stream cut into binary
// messages. Writes are gathered: what yamux writes while the previous
// message is on its way goes out in the next one, up to MaxMessage, so
// that under load many frames share one message and one flush (group
// commit, no added latency when idle); a data frame's header is always
// sent with its body. At most MaxMessage waits to be sent: beyond it,
// Write blocks. Close sends what was written first (a yamux stream's last
// answer goes before its session closes), for at most CloseFlushTimeout.
// ctx bounds the connection: when it ends the websocket is closed, which
// ends reads and writes in progress. (Reads and writes themselves run
// without a context: the websocket library would arm and disarm a watch
// of it for every message.)
//
// The gathering is what keeps the wire cheap, even with few requests in
// flight: with 8 connections a request and its answer took 0.87 messages
// between them (2.3 frames a message). Sending a frame from the goroutine
// that wrote it instead, to spare the flusher's wake-up (from yamux's send
// loop, tried three times, or from the stream's writer once yamux handed
// the frame over), took 1.9 messages a request, cost up to 9% more CPU
// per request and kept a median 0.95x of the requests/s (0.81x to 1.09x)
// in A/B runs interleaved in one process. Sending from the send loop only
// on a quiet connection (nothing on its way, no message for 50 µs) made
// 5.4 against 4.9 socket writes per request in client.BenchmarkExposeVsProxy
// and, in the bench at 8 connections run at raised priority (nice -10,
// the regime of a quiet machine; 2026-12-08), cut the CPU per request
// against the proxy's by a median 0.04 under load 8 to 17 (9 pairs) but
// raised it by 0.04 under load 4 to 7 (6 pairs), requests/s within the
// noise both times: not a gain either.
//
// Two ways of reordering the same goroutines failed as well (8
// connections, A/B against the unchanged build in alternating runs):
// yielding the send loop right after waking an idle flusher, so that the
// first frame of a burst leaves before its writer resumes, cost 16% to
// 27% more CPU per request and 0.72x to 0.85x of the requests/s against
// 0.98x to 0.99x (it takes from the gathering what it gives to the
// first frame); yielding the woken flusher once before it takes the
// buffer, to gather more, left the messages per request as they were
// (5.11 against 5.18 socket writes per request in all) and the figures
// within the noise. Where the time goes, for the record: at 8
// connections the expose path makes about 1.2 websocket messages (one
// socket write each) and 1.9 socket reads per request more than a plain
// reverse proxy, and its CPU per request is within 10% of the proxy's;
// the rest of the gap is the hand-offs a yamux session adds (each
// frame crosses the writer, the send loop and the flusher, and the
// receive loop wakes the reader), which only a wire without a send loop
// would remove.
//
// Such a wire was tried beside the session (plain "data connections",
// an HTTP/1.1 upgrade per keep-alive connection served by the agent's
// pairs; reverted, the code is in the history): it removed the
// hand-offs but not the gathering's savings, 22 against 18 system calls
// per request at 8 connections and 21 against 16 at 32, so its CPU per
// request was 1.10x and 1.08x the session's (0.96x at one connection).
// In interleaved bench runs at 8 connections under the shared machine's
// load (5 to 20) the expose ratio to the proxy fell from a median 1.03x
// to 0.85x; in quieter windows (load 3 to 7, six pairs) it was 0.92x
// against 0.96x, within the noise. On the quiet machine (nothing else
// running, five interleaved pairs, main with the hub's fast path) it was
// a median 0.85x against the session's 0.87x: not a gain either.
//
// Nor was a session without yamux's send loop (a wire-identical fork of
// yamux v0.1.2 whose writers append their frames here themselves, the
// flusher yielding once when woken so that it still gathers, since
// without the yield it sent frames one by one): in bench/mux at 8
// streams it made 1.24x the round trips at 0.74x the CPU, yet the expose
// path at 8 connections stayed where it was, 0.95x the proxy against
// 0.81x in six interleaved pairs (pair by pair a median +0.02, load 8
// to 15) and 0.94x against 0.95x in three quieter ones (load 5 to 11),
// at 1.07x against 1.02x the proxy's CPU per request. The send loop's two hand-offs are about 3 µs
// of CPU per round trip, lost in the ~120 µs a request costs there, so
// the fork was reverted.
//
// The receive side, counted over 40,000 requests of
// client.BenchmarkExposeVsProxy at 8 connections, leaves nothing to
// gather: a request and its answer are one data frame each (the agent
// sends an answer's header and a small body in one write), window
// updates come only when a stream opens (the 4 MiB window is topped up
// at half), and a message averages 1.0 KB (2.7 KB at 32 connections),
// so the websocket's 4 KiB read buffer takes it in one read. Per
// request the path makes 17.7 system calls against the proxy's 15.1
// (reads 10.7 against 9.0, writes 4.9 against 4.0, epoll waits 1.6
// against 1.2): the 0.9 websocket messages' writes, their reads and the
// reads that find the socket empty, which only fewer messages would
// spare.
func Conn(ctx context.Context, ws *websocket.Conn) net.Conn {
	c := &conn{
		Conn: websocket.NetConn(ctx, ws, websocket.MessageBinary), ws: ws, ctx: ctx,
		wake: make(chan struct{}, 1), space: make(chan struct{}, 1), sent: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	c.stopWatch = context.AfterFunc(ctx, func() { ws.CloseNow() })
	go c.flush()
	return c
}

type conn struct {
	net.Conn  // addresses and Close
	ws        *websocket.Conn
	msg       io.Reader // the message being read, if any
	stopWatch func() bool
	ctx       context.Context
	wake      chan struct{} // data waits
	space     chan struct{} // the buffer was taken
	sent      chan struct{} // a message went out
	done      chan struct{} // closed by Close
	once      sync.Once

	mu      sync.Mutex
	buf     []byte
	spare   []byte
	header  [headerSize]byte
	held    bool
	sending bool // the flusher is writing what it took from buf
	err     error
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
		c.sending = true
		// A Write between the wake-up and the lock signalled for what
		// was just taken: without this, the flusher woke again for an
		// empty buffer (at 8 connections 27% of its wake-ups, 37% at 32).
		select {
		case <-c.wake:
		default:
		}
		c.mu.Unlock()
		signal(c.space)
		var err error
		for rest := out; len(rest) > 0 && err == nil; {
			n := min(len(rest), MaxMessage)
			err = c.ws.Write(context.Background(), websocket.MessageBinary, rest[:n])
			rest = rest[n:]
		}
		c.mu.Lock()
		if cap(out) <= 4*MaxMessage {
			c.spare = out[:0]
		}
		if err != nil && c.err == nil {
			c.err = err
		}
		c.sending = false
		c.mu.Unlock()
		signal(c.sent)
		if err != nil {
			c.ws.CloseNow()
			return
		}
	}
}

// Read reads the session's bytes, message after message, remembering the
// error that ended them: io.EOF when the other end closed the websocket
// normally, as websocket.NetConn reads. Only yamux's receive loop reads.
func (c *conn) Read(p []byte) (int, error) {
	for {
		if c.msg == nil {
			typ, r, err := c.ws.Reader(context.Background())
			if err != nil {
				switch websocket.CloseStatus(err) {
				case websocket.StatusNormalClosure, websocket.StatusGoingAway:
					err = io.EOF
				}
				return 0, c.readFailed(err)
			}
			if typ != websocket.MessageBinary {
				err := fmt.Errorf("unexpected frame type read (expected %v): %v", websocket.MessageBinary, typ)
				c.ws.Close(websocket.StatusUnsupportedData, err.Error())
				return 0, c.readFailed(err)
			}
			c.msg = r
		}
		n, err := c.msg.Read(p)
		if err == io.EOF {
			c.msg, err = nil, nil
		}
		if err != nil {
			return n, c.readFailed(err)
		}
		if n > 0 || len(p) == 0 {
			return n, nil
		}
	}
}

// readFailed records err as the cause, if none was, and returns it.
func (c *conn) readFailed(err error) error {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	return err
}

// Cause reports why a connection made by Conn ended: the first read or
// write error, or nil while it lives or when it was closed on purpose.
func Cause(nc net.Conn) error {
	c, ok := nc.(*conn)
	if !ok {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close sends what was written, then closes the websocket.
func (c *conn) Close() error {
	c.once.Do(func() {
		c.drain()
		close(c.done)
		c.stopWatch()
	})
	return c.Conn.Close()
}

// drain waits until the flusher has sent everything written so far, the
// connection failed, or CloseFlushTimeout passed.
func (c *conn) drain() {
	var timeout <-chan time.Time
	for {
		c.mu.Lock()
		idle := c.err != nil || (len(c.buf) == 0 && !c.sending)
		c.mu.Unlock()
		if idle {
			return
		}
		if timeout == nil {
			t := time.NewTimer(CloseFlushTimeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-c.sent:
		case <-timeout:
			return
		case <-c.ctx.Done():
			return
		}
	}
}
