package channels

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/httpapi"
)

// Close codes and reasons the server sends.
const (
	// closeSlow: the subscriber's send queue overflowed. It may reconnect
	// with ?since= to resume from the history.
	closeSlow       = websocket.StatusPolicyViolation
	reasonSlow      = "slow consumer: send queue full"
	reasonBroadcast = "listen-only: this channel is broadcast-only or the token may not publish"
	reasonUTF8      = "text message must be valid UTF-8"
	reasonShutdown  = "server shutting down"
	reasonPublish   = "publish failed"
)

// wsBufferSize is the size of each websocket connection's read buffer.
// net/http hands a hijacked connection 4 KiB buffers each way; most
// channel traffic is small, and an idle subscriber should cost as little
// as possible, so postern gives coder/websocket smaller ones. Larger
// frames are read straight through.
const wsBufferSize = 512

// wsWriteBufferSize is the size of the buffer coder/websocket writes its
// frames into. It writes only control frames here (postern writes the
// data frames and the pings itself): a close frame, or a pong when it
// reads a ping, at most 2 + 125 bytes, so every frame fits whole and
// reaches connWriter in one Write.
const wsWriteBufferSize = 128

// keepAliveReply is queued to answer an empty websocket message: an empty
// text frame to that sender only.
var keepAliveReply = &broker.Message{}

// envelope is a message as sent to subscribers that asked for ids
// (?since=): {"id": "...", "data": "..."}; binary data is base64 with
// "binary": true. A gap in the history is {"gap": true}, sent first.
type envelope struct {
	ID     string `json:"id,omitempty"`
	Data   string `json:"data"`
	Binary bool   `json:"binary,omitempty"`
}

// Frames that do not depend on a message.
var (
	gapFrame       = appendFrame(nil, opText, []byte(`{"gap":true}`))
	emptyTextFrame = appendFrame(nil, opText, nil)
)

// The wire forms of a message (broker.Message.Wire): its websocket frame
// as such, its frame as an envelope, and its event-stream event.
const (
	wirePlain = iota
	wireEnvelope
	wireEvent
)

// session is one websocket subscriber. Its reader is the session's own
// goroutine. Messages are written by the channels' writer pool, without
// ever waiting on the socket; only a subscriber whose socket is full (or
// a connection that cannot be written to without waiting, TLS) gets a
// writer goroutine of its own, while it has messages. Pings go out from
// the ping timer's goroutine and nothing waits for the pong: the reader
// takes it, so an idle subscriber costs one goroutine, parked on a
// shallow stack, ping round or not.
type session struct {
	c        *Channels
	name     string
	conn     *websocket.Conn
	hw       *hijackWriter
	sub      *broker.Subscription
	envelope bool
	// listenOnly: the channel is broadcast-only, or the client's token
	// may not publish to it.
	listenOnly bool
	// rc writes to the socket without waiting (the pool's writes); nil
	// when the connection has none (TLS): its own writer does all.
	rc  syscall.RawConn
	gap atomic.Bool // a gap frame is due before anything else

	// wmu is held while a whole frame goes to the socket: the data frames
	// postern writes and the control frames coder/websocket writes
	// (through connWriter), so that none lands inside another.
	wmu sync.Mutex
	// closeSent: coder/websocket wrote a close frame; no data frame may
	// follow. Guarded by wmu.
	closeSent bool

	// rmu is held while the reader looks at the read buffer itself (for
	// pings and pongs, see awaitFrame); closing is set under it before
	// another goroutine starts a close handshake, which reads through the
	// same buffer. Guarded by rmu.
	rmu     sync.Mutex
	closing bool
	// peekable: the read buffer reads the socket itself (no bytes came
	// before the handshake ended), and the socket can be waited on without
	// reading (not TLS); only then does awaitFrame look at it.
	peekable bool

	mu    sync.Mutex
	ready bool // conn is set
	ended bool // the reader has finished: start nothing new
	// writing: a writer owns the queue (the session is in the pool, a
	// pool worker drains it, or its own writer goroutine runs); it stays
	// set after a write failed, so that nothing is written any more.
	writing bool
	pinging bool // a ping waits for its pong; the timer is its deadline
	timer   *time.Timer
	wg      sync.WaitGroup // the writer and ping goroutines, the pool's turn
	linger  *time.Timer    // the own writer's; only it touches it
	// lingering: linger is armed (and not yet fired); active: when the
	// own writer last sent a message.
	lingering bool
	active    time.Time
}

// writerLinger is how long a session's own writer waits for more
// messages before it exits. A variable only so that tests can shorten it.
var writerLinger = time.Second

// drainBurst is how many frames a pool worker writes for one session
// before it puts the session back at the end of the line.
const drainBurst = 64

func (c *Channels) serveWebsocket(w http.ResponseWriter, r *http.Request, name string) error {
	since, asked, err := parseSince(r, false)
	if err != nil {
		return err
	}
	if !c.acceptingSessions() {
		return httpapi.ErrShuttingDown
	}
	s := &session{c: c, name: name, envelope: asked, listenOnly: c.broadcastOnly(name) || !c.mayTake(r, auth.Write, name)}
	sub, err := c.b.Subscribe(r.Context(), name, broker.SubscribeOptions{Since: since, Wake: s.wake})
	if err != nil {
		c.sessions.Done()
		return publishError(err)
	}
	s.sub = sub
	s.hw = &hijackWriter{ResponseWriter: w, out: connWriter{s}}
	conn, err := websocket.Accept(s.hw, r, &websocket.AcceptOptions{
		// The origin was checked already, with postern's rules.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
		// Pongs that coder/websocket reads (between the frames of a
		// message; awaitFrame takes the others).
		OnPongReceived: s.onPong,
	})
	if err != nil {
		// Accept answered the request itself (400, 405, 426).
		sub.Close()
		c.sessions.Done()
		return nil
	}
	// The session runs on a goroutine of its own and the handler returns,
	// so that net/http's connection state (its buffers, the request, a
	// stack grown while serving it) is released: an idle subscriber then
	// holds only what it needs.
	s.hw.ResponseWriter = nil
	if s.hw.br != nil && s.hw.early == 0 {
		// coder/websocket wrapped the socket for bytes that came early;
		// there were none, so read it directly (one frame less on the
		// stack of every idle reader).
		s.hw.br.Reset(s.hw.nc)
		s.peekable = waitable(s.hw.nc)
	}
	conn.SetReadLimit(c.opts.MaxMessageBytes)
	s.conn = conn
	s.rc = rawConn(s.hw.nc)
	c.websockets.Add(1)
	go s.run()
	return nil
}

// run reads the client's messages until the connection ends, then tears
// the session down.
func (s *session) run() {
	s.mu.Lock()
	s.ready = true
	s.gap.Store(s.envelope && s.sub.Gap())
	s.timer = time.AfterFunc(s.c.opts.PingInterval, s.ping)
	// A replay or messages may be queued already; wakes from now on are
	// the broker's.
	due := s.pending()
	s.mu.Unlock()
	if due {
		s.wake()
	}

	s.read()

	s.sub.Close()
	s.mu.Lock()
	s.ended = true
	s.timer.Stop()
	s.mu.Unlock()
	s.wg.Wait()
	s.conn.CloseNow()
	s.c.websockets.Add(-1)
	s.c.sessions.Done()
}

// read runs the client's messages through handle until the connection
// ends. An idle subscriber spends its life parked in here, so the frames
// on the way to the socket are kept small: handling happens in handle,
// and coder/websocket reads only once a frame it must read is there.
func (s *session) read() {
	for {
		s.awaitFrame()
		typ, data, err := s.next()
		if err != nil || !s.handle(typ, data) {
			return
		}
	}
}

// awaitFrame returns once the client sent a frame that coder/websocket
// must read: a data or close frame, a malformed one, or the end of the
// connection. Meanwhile it waits for the socket on a shallow stack (see
// waitReadable), which the garbage collector keeps small, and takes the
// pings and pongs itself, straight from the read buffer: an idle
// subscriber is never parked deep inside coder/websocket's reader, so a
// ping round does not leave it a grown stack.
//
// It touches the buffer only under rmu and before a close handshake
// begins (closing), since the handshake reads through the same buffer
// from another goroutine. While it waits with nothing buffered, the
// buffer's memory goes back to a pool (hijackWriter.giveBack), and it is
// lent again before any read.
//
//go:noinline
func (s *session) awaitFrame() {
	if !s.peekable {
		return // coder/websocket reads all, pings and pongs too
	}
	br := s.hw.br
	for {
		s.rmu.Lock()
		if s.closing {
			s.rmu.Unlock()
			return
		}
		buffered, _ := br.Peek(br.Buffered())
		op, size := peekControl(buffered)
		if size == 0 {
			s.rmu.Unlock()
			return
		}
		if size <= len(buffered) {
			var payload [maxControlPayload]byte
			n := unmaskControl(payload[:], buffered[:size])
			br.Discard(size)
			s.rmu.Unlock()
			if op == opPong {
				s.pong()
			} else if !s.sendControl(opPong, payload[:n]) {
				return
			}
			continue
		}
		// The rest of the frame, or the next one, is still to come.
		have := len(buffered)
		if have == 0 {
			s.hw.giveBack() // nothing to keep while waiting
		}
		s.rmu.Unlock()
		waitReadable(s.hw.nc)
		s.rmu.Lock()
		if s.closing {
			s.rmu.Unlock()
			return
		}
		s.hw.lend()
		// One read: the socket has data (or an end, or an error, which
		// coder/websocket's read reports in turn).
		_, err := br.Peek(have + 1)
		s.rmu.Unlock()
		if err != nil {
			return
		}
	}
}

//go:noinline
func (s *session) next() (websocket.MessageType, []byte, error) {
	return s.conn.Read(context.Background())
}

// handle acts on one message from the client; false ends the session.
//
//go:noinline
func (s *session) handle(typ websocket.MessageType, data []byte) bool {
	if typ == websocket.MessageText && !utf8.Valid(data) {
		s.c.m.closed.WithLabelValues("invalid_utf8").Inc()
		s.conn.Close(websocket.StatusInvalidFramePayloadData, reasonUTF8)
		return false
	}
	if len(data) == 0 {
		// Not broadcast: an empty frame goes back to this sender.
		s.c.m.empty.WithLabelValues("websocket").Inc()
		s.sub.Deliver(keepAliveReply)
		return true
	}
	if s.listenOnly {
		s.c.m.closed.WithLabelValues("listen_only").Inc()
		s.conn.Close(websocket.StatusPolicyViolation, reasonBroadcast)
		return false
	}
	if _, err := s.c.b.Publish(context.Background(), s.name, broker.Message{Binary: typ == websocket.MessageBinary, Body: data}); err != nil {
		if errors.Is(err, broker.ErrShuttingDown) {
			s.conn.Close(websocket.StatusGoingAway, reasonShutdown)
		} else {
			s.c.m.closed.WithLabelValues("publish_failed").Inc()
			s.conn.Close(websocket.StatusTryAgainLater, reasonPublish)
		}
		return false
	}
	s.c.m.published.WithLabelValues("websocket").Inc()
	return true
}

// wake hands the session to a writer unless one owns it, the connection
// is not set up yet or the session is over. The broker calls it when
// messages arrive.
func (s *session) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready || s.ended || s.writing {
		return
	}
	s.writing = true
	s.wg.Add(1)
	if s.rc != nil {
		s.c.pool.schedule(s)
		return
	}
	go s.write(false, nil)
}

// pending reports whether a writer has something to do; s.mu held.
func (s *session) pending() bool {
	return s.gap.Load() || s.sub.Len() > 0 || s.sub.Err() != nil
}

// letGo ends the writer's turn unless something is pending; the caller
// then calls s.wg.Done.
func (s *session) letGo() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending() && !s.ended {
		return false
	}
	s.writing = false
	return true
}

// nextFrame returns the next frame to send: the gap frame, then the
// queue.
func (s *session) nextFrame() (frame []byte, ok bool, err error) {
	if s.gap.Load() && s.gap.CompareAndSwap(true, false) {
		return gapFrame, true, nil
	}
	m, ok, err := s.sub.TryNext()
	if !ok || err != nil {
		return nil, ok, err
	}
	return s.frame(m), true, nil
}

// frame is m's websocket frame for this subscriber; made once per
// message, whatever the number of subscribers.
func (s *session) frame(m *broker.Message) []byte {
	switch {
	case m == keepAliveReply:
		return emptyTextFrame
	case s.envelope:
		return m.Wire(wireEnvelope, envelopeFrame)
	default:
		return m.Wire(wirePlain, plainFrame)
	}
}

func plainFrame(m *broker.Message) []byte {
	op := opText
	if m.Binary {
		op = opBinary
	}
	return appendFrame(nil, op, m.Body)
}

func envelopeFrame(m *broker.Message) []byte {
	e := envelope{Binary: m.Binary}
	if !m.ID.IsZero() {
		e.ID = m.ID.String()
	}
	if m.Binary {
		e.Data = base64.StdEncoding.EncodeToString(m.Body)
	} else {
		e.Data = string(m.Body)
	}
	b, _ := json.Marshal(e) // strings and a bool: it cannot fail
	return appendFrame(nil, opText, b)
}

// drain runs on a pool worker: it writes what the session has queued,
// up to drainBurst frames, and never waits. When the socket does not
// take a whole frame, the write lock is taken (coder/websocket writing a
// control frame) or the subscription ended (slow, shutting down), the
// session's own writer takes over and does what may wait.
func (s *session) drain(w *fastWriter) {
	if !s.wmu.TryLock() {
		go s.write(false, nil)
		return
	}
	s.drainLocked(w, drainBurst)
}

// drainLocked is drain with s.wmu held, for up to burst frames. Frames
// queued together go out together: one writev(2) of up to coalesceBytes.
func (s *session) drainLocked(w *fastWriter, burst int) {
	for burst > 0 {
		frame, ok := s.takeFrame()
		if !ok {
			return
		}
		frames := append(w.frames[:0], frame)
		size := len(frame)
		for len(frames) < burst && size < coalesceBytes {
			// nextFrame, not takeFrame: with nothing more queued the
			// session must not be let go before these frames are out.
			f, ok, err := s.nextFrame()
			if !ok || err != nil {
				break // an error stays: takeFrame meets it next
			}
			frames = append(frames, f)
			size += len(f)
		}
		w.frames = frames
		burst -= len(frames)
		var n int
		var err error
		if len(frames) == 1 {
			n, err = w.try(s.rc, frame)
		} else {
			n, err = w.tryv(s.rc, frames)
		}
		ok = s.wroteFrames(frames, size, n, err)
		clear(frames)
		if !ok {
			return
		}
	}
	s.wmu.Unlock()
	s.c.pool.schedule(s) // more may be queued: back of the line
}

// coalesceBytes is how many bytes of queued frames a pool worker gathers
// into one write.
const coalesceBytes = 32 << 10

// wroteFrames is wrote for a write of frames, size bytes in all.
func (s *session) wroteFrames(frames [][]byte, size, n int, err error) bool {
	switch {
	case len(frames) == 1:
		return s.wrote(frames[0], n, err)
	case err != nil:
		return s.wrote(nil, 0, err)
	case n >= size:
		return true
	}
	// The socket took part: the own writer sends the rest, in one piece.
	rest := make([]byte, 0, size-n)
	for _, f := range frames {
		if n >= len(f) {
			n -= len(f)
			continue
		}
		rest = append(rest, f[n:]...)
		n = 0
	}
	go s.write(true, rest)
	return false
}

// takeFrame returns the next frame a pool worker is to write, s.wmu
// held. false: there is none, and the session was let go or handed to
// its own writer (s.wmu released either way).
func (s *session) takeFrame() ([]byte, bool) {
	for {
		frame, ok, err := s.nextFrame()
		switch {
		case errors.Is(err, broker.ErrClosed):
			s.wmu.Unlock()
			s.wg.Done() // the reader is done; writing stays set
			return nil, false
		case err != nil:
			s.wmu.Unlock()
			go s.write(false, nil) // it closes the connection with a status
			return nil, false
		case !ok:
			s.wmu.Unlock()
			if s.letGo() {
				s.wg.Done()
				return nil, false
			}
			if !s.wmu.TryLock() {
				go s.write(false, nil)
				return nil, false
			}
			continue
		case s.closeSent:
			continue // the connection is closing: nothing may follow
		}
		return frame, true
	}
}

// wrote acts on the outcome of a pool worker's write of frame (n bytes
// written, or err), s.wmu held. true: the whole frame went and the worker
// may go on with the session; false: the session was handed on (a
// broken connection closed, or a full socket to the own writer).
func (s *session) wrote(frame []byte, n int, err error) bool {
	if err != nil {
		s.wmu.Unlock()
		s.c.m.closed.WithLabelValues("write_failed").Inc()
		s.hw.nc.Close() // the reader then ends the session
		s.wg.Done()
		return false
	}
	if n < len(frame) {
		// The socket is full: the own writer finishes the frame,
		// holding the write lock until it has.
		go s.write(true, frame[n:])
		return false
	}
	return true
}

// write is the session's own writer. It writes with writes that may wait
// (bounded by the write timeout), until the queue is empty and stays so
// for writerLinger, then exits. held: the caller holds s.wmu and rest is
// the end of a frame it began, to be sent first.
func (s *session) write(held bool, rest []byte) {
	defer s.wg.Done()
	if held {
		err := s.writeLocked(rest)
		s.wmu.Unlock()
		if err != nil {
			s.writeFailed()
			return
		}
	}
	s.active = time.Now()
	for {
		frame, ok, err := s.nextFrame()
		switch {
		case errors.Is(err, broker.ErrSlow):
			s.c.m.closed.WithLabelValues("slow").Inc()
			s.closeWith(closeSlow, reasonSlow)
			return
		case errors.Is(err, broker.ErrShuttingDown):
			s.c.m.closed.WithLabelValues("shutdown").Inc()
			s.closeWith(websocket.StatusGoingAway, reasonShutdown)
			return
		case err != nil:
			return // closed: the reader is done
		case ok:
			if !s.send(frame) {
				return
			}
			s.active = time.Now()
			continue
		}
		// Nothing queued: linger a little for the next message, so that a
		// busy channel does not start a goroutine per message and
		// subscriber; then let go, so that an idle one costs none.
		// The timer is armed once per linger period, not per message:
		// when it fires before the writer was idle that long, it is
		// re-armed for what is left.
		if s.linger == nil {
			s.linger = time.NewTimer(writerLinger)
		} else if !s.lingering {
			s.linger.Reset(writerLinger)
		}
		s.lingering = true
		select {
		case <-s.sub.Signal():
			continue
		case <-s.sub.Done():
			continue
		case <-s.linger.C:
			s.lingering = false
		}
		if left := writerLinger - time.Since(s.active); left > 0 {
			s.linger.Reset(left)
			s.lingering = true
			continue
		}
		if s.letGo() {
			if writerLetGo != nil {
				writerLetGo()
			}
			return
		}
	}
}

// writerLetGo, when set (by tests, before any session starts), is called
// each time a writer (a pool worker or a session's own) exits for lack of
// messages.
var writerLetGo func()

// send writes one frame, waiting for the socket within the write
// timeout; a failure closes the connection (the reader then ends the
// session).
func (s *session) send(frame []byte) bool {
	s.wmu.Lock()
	err := s.writeLocked(frame)
	s.wmu.Unlock()
	if err != nil {
		s.writeFailed()
		return false
	}
	return true
}

// writeLocked writes p, waiting within the write timeout; s.wmu held.
// After a close frame it writes nothing.
func (s *session) writeLocked(p []byte) error {
	if s.closeSent {
		return nil
	}
	s.hw.deadline(s.c.opts.WriteTimeout)
	_, err := s.hw.nc.Write(p)
	return err
}

func (s *session) writeFailed() {
	s.c.m.closed.WithLabelValues("write_failed").Inc()
	s.conn.CloseNow()
}

// closeWith closes the connection with a status, from a goroutine other
// than the reader; the close frame goes out through connWriter, within
// the write timeout, and the close handshake reads through the read
// buffer, which the reader then leaves alone.
func (s *session) closeWith(code websocket.StatusCode, reason string) {
	s.rmu.Lock()
	s.closing = true
	s.hw.lend()
	s.rmu.Unlock()
	s.conn.Close(code, reason)
}

// sendControl writes a control frame postern makes itself (a ping, or
// the pong that answers the client's ping), within the write timeout.
func (s *session) sendControl(op byte, payload []byte) bool {
	var b [2 + maxControlPayload]byte
	return s.send(appendFrame(b[:0], op, payload))
}

// connWriter is what coder/websocket writes to: its control frames
// (pongs, pings, close frames), each a whole frame in one Write, since
// every frame it writes ends with a flush and a control frame (at most
// 14 + 125 bytes) fits its 512-byte buffer. Each goes out under the
// session's write lock, so never inside a data frame that postern writes
// itself.
type connWriter struct{ s *session }

func (w connWriter) Write(p []byte) (int, error) {
	s := w.s
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if len(p) > 0 && p[0]&0x0f == opClose {
		s.closeSent = true
	}
	s.hw.deadline(s.c.opts.WriteTimeout)
	return s.hw.nc.Write(p)
}

// ping runs on the ping timer's goroutine. Idle: it sends a ping and arms
// the timer as the pong deadline; the reader takes the pong (onPong) and
// arms it for the next ping. Pinging: the pong is overdue and the
// connection is closed. Nothing waits for a pong, and one timer serves
// both.
func (s *session) ping() {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	if s.pinging {
		s.mu.Unlock()
		s.c.m.closed.WithLabelValues("pong_timeout").Inc()
		s.conn.CloseNow()
		return
	}
	s.pinging = true
	s.timer.Reset(s.c.opts.PongTimeout)
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	s.sendControl(opPing, nil) // a failure closes the connection
}

// onPong is pong as coder/websocket calls it (AcceptOptions.OnPongReceived).
func (s *session) onPong(context.Context, []byte) { s.pong() }

// pong takes a pong from the client: the connection is alive, and the
// next ping is due a ping interval from now. Any pong counts, asked for
// or not.
func (s *session) pong() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pinging && !s.ended {
		s.pinging = false
		s.timer.Reset(s.c.opts.PingInterval)
	}
}

// hijackWriter hands coder/websocket a hijacked connection with small
// buffers, writing through out, and keeps the net.Conn so that postern
// writes to it itself and writes get deadlines without a timer per write.
type hijackWriter struct {
	http.ResponseWriter
	out io.Writer // what coder/websocket's frames go to
	nc  net.Conn
	br  *bufio.Reader // ours, when small buffers were handed out
	// lent is the pooled reader whose buffer br reads into (br is a copy
	// of it); nil while br has no buffer (see giveBack). Only the
	// session's reader, or a closer under the session's rmu, changes it.
	lent *bufio.Reader
	// early is how many bytes the client sent before the handshake
	// completed.
	early int
	set   atomic.Int64 // when the write deadline was last set (Unix ns)
}

func (h *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.nc = nc
	if brw.Writer.Buffered() > 0 {
		if err := brw.Writer.Flush(); err != nil {
			return nil, nil, err
		}
	}
	n := brw.Reader.Buffered()
	h.early = n
	bw := bufio.NewWriterSize(h.out, wsWriteBufferSize)
	if n > wsBufferSize {
		// A client that sent ahead: keep net/http's read buffer.
		return nc, bufio.NewReadWriter(brw.Reader, bw), nil
	}
	h.br = new(bufio.Reader)
	h.lend()
	if n > 0 {
		early, _ := brw.Reader.Peek(n)
		h.br.Reset(io.MultiReader(bytes.NewReader(bytes.Clone(early)), nc))
		h.br.Peek(n) // pull the early bytes into the buffer, which coder/websocket keeps
	}
	return nc, bufio.NewReadWriter(h.br, bw), nil
}

// readBuffers holds the read buffers of websocket connections that wait
// for their client with nothing to read: an idle subscriber holds none.
var readBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, wsBufferSize) }}

// lend gives br a buffer from readBuffers, reading nc, unless it has one
// or there is no br (coder/websocket reads through net/http's reader).
func (h *hijackWriter) lend() {
	if h.lent != nil || h.br == nil {
		return
	}
	p := readBuffers.Get().(*bufio.Reader)
	p.Reset(h.nc)
	*h.br = *p
	h.lent = p
}

// giveBack returns br's buffer to readBuffers when it holds nothing. br
// must then not be read before lend: its zero value has no buffer. The
// caller makes sure that nobody reads through it meanwhile
// (session.awaitFrame, session.closeWith).
func (h *hijackWriter) giveBack() {
	if h.lent == nil || h.br.Buffered() > 0 {
		return
	}
	*h.br = bufio.Reader{}
	h.lent.Reset(nil)
	readBuffers.Put(h.lent)
	h.lent = nil
}

// deadline makes the connection's write deadline between 0.9 d and d
// from now. It moves the deadline only when a tenth of d has passed since
// it last did, so that a busy writer does not reset a runtime timer for
// every frame. Only writes that may wait need it: the pool's do not.
func (h *hijackWriter) deadline(d time.Duration) {
	now := time.Now().UnixNano()
	if last := h.set.Load(); last != 0 && now-last < int64(d/10) && now >= last {
		return
	}
	h.set.Store(now)
	h.nc.SetWriteDeadline(time.Unix(0, now).Add(d))
}
