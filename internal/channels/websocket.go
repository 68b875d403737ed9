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

// wsBufferSize is the size of each websocket connection's read and write
// buffers. net/http hands a hijacked connection 4 KiB buffers each way;
// most channel traffic is small, and an idle subscriber should cost as
// little as possible, so postern gives coder/websocket smaller ones.
// Larger frames are read and written straight through.
const wsBufferSize = 512

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

var gapFrame = []byte(`{"gap":true}`)

// session is one websocket subscriber. Its reader is the session's own
// goroutine; a writer goroutine runs only while messages are queued, and a
// ping goroutine only while a ping waits for its pong, so an idle
// subscriber costs one goroutine.
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

	mu      sync.Mutex
	ready   bool // conn is set
	ended   bool // the reader has finished: start nothing new
	writing bool // a writer goroutine runs
	gap     bool // a gap frame is due before anything else
	pinging bool // a ping waits for its pong; the timer is its deadline
	timer   *time.Timer
	wg      sync.WaitGroup // writer and ping goroutines
	linger  *time.Timer    // the writer's; only it touches it
	// lingering: linger is armed (and not yet fired); active: when the
	// writer last sent a message.
	lingering bool
	active    time.Time
}

// writerLinger is how long a writer waits for more messages before it
// exits. A variable only so that tests can shorten it.
var writerLinger = time.Second

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
	s.hw = &hijackWriter{ResponseWriter: w}
	conn, err := websocket.Accept(s.hw, r, &websocket.AcceptOptions{
		// The origin was checked already, with postern's rules.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
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
	}
	conn.SetReadLimit(c.opts.MaxMessageBytes)
	s.conn = conn
	c.websockets.Add(1)
	go s.run()
	return nil
}

// run reads the client's messages until the connection ends, then tears
// the session down.
func (s *session) run() {
	s.mu.Lock()
	s.ready = true
	s.gap = s.envelope && s.sub.Gap()
	s.timer = time.AfterFunc(s.c.opts.PingInterval, s.ping)
	s.mu.Unlock()
	s.wake() // a replay or messages may already be queued

	if s.hw.early == 0 {
		// Nothing buffered yet: wait for the client's first frame on a
		// shallow stack (see waitReadable). A close from the writer
		// meanwhile reads through coder/websocket, never through this.
		waitReadable(s.hw.nc)
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
// off the parked stack.
func (s *session) read() {
	for {
		typ, data, err := s.next()
		if err != nil || !s.handle(typ, data) {
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

// wake starts the writer unless it runs, the connection is not set up yet
// or the session is over. The broker calls it when messages arrive.
func (s *session) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready || s.ended || s.writing {
		return
	}
	s.writing = true
	s.wg.Add(1)
	go s.write()
}

// pending reports whether the writer has something to do; s.mu held.
func (s *session) pending() bool {
	return s.gap || s.sub.Len() > 0 || s.sub.Err() != nil
}

// write sends queued messages until the queue is empty, then exits.
func (s *session) write() {
	defer s.wg.Done()
	s.active = time.Now()
	for {
		s.mu.Lock()
		gap := s.gap
		s.gap = false
		s.mu.Unlock()
		if gap {
			if !s.send(websocket.MessageText, gapFrame) {
				return
			}
		}
		m, ok, err := s.sub.TryNext()
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
			if !s.sendMessage(m) {
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
		s.mu.Lock()
		if !s.pending() || s.ended {
			s.writing = false
			s.mu.Unlock()
			if writerLetGo != nil {
				writerLetGo()
			}
			return
		}
		s.mu.Unlock()
	}
}

// writerLetGo, when set (by tests, before any session starts), is called
// each time a writer exits for lack of messages.
var writerLetGo func()

// closeWith closes the connection with a status, bounded by the write
// timeout for the close frame.
func (s *session) closeWith(code websocket.StatusCode, reason string) {
	s.hw.deadline(s.c.opts.WriteTimeout)
	s.conn.Close(code, reason)
}

func (s *session) sendMessage(m *broker.Message) bool {
	if m == keepAliveReply {
		return s.send(websocket.MessageText, nil)
	}
	if !s.envelope {
		typ := websocket.MessageText
		if m.Binary {
			typ = websocket.MessageBinary
		}
		return s.send(typ, m.Body)
	}
	e := envelope{Binary: m.Binary}
	if !m.ID.IsZero() {
		e.ID = m.ID.String()
	}
	if m.Binary {
		e.Data = base64.StdEncoding.EncodeToString(m.Body)
	} else {
		e.Data = string(m.Body)
	}
	frame, err := json.Marshal(e)
	if err != nil {
		return false
	}
	return s.send(websocket.MessageText, frame)
}

// send writes one frame within the write timeout; a failure closes the
// connection (the reader then ends the session).
func (s *session) send(typ websocket.MessageType, p []byte) bool {
	ctx := context.Background()
	if !s.hw.deadline(s.c.opts.WriteTimeout) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.c.opts.WriteTimeout)
		defer cancel()
	}
	if err := s.conn.Write(ctx, typ, p); err != nil {
		s.c.m.closed.WithLabelValues("write_failed").Inc()
		s.conn.CloseNow()
		return false
	}
	return true
}

// ping runs on the ping timer's goroutine. Idle: it sends a ping, arms
// the timer as the pong deadline and waits for the pong, then arms it for
// the next ping. Pinging: the pong is overdue and the connection is
// closed, which also ends the waiting ping. One timer serves both, so a
// ping costs no context or timer of its own.
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
	s.hw.deadline(s.c.opts.WriteTimeout)
	err := s.conn.Ping(context.Background())
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		return // closed: by the deadline above, or the session is ending
	}
	s.pinging = false
	if !s.ended {
		s.timer.Reset(s.c.opts.PingInterval)
	}
}

// hijackWriter hands coder/websocket a hijacked connection with small
// buffers, and keeps the net.Conn so that writes get deadlines without a
// timer per write.
type hijackWriter struct {
	http.ResponseWriter
	nc net.Conn
	br *bufio.Reader // ours, when small buffers were handed out
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
	if n > wsBufferSize {
		return nc, brw, nil // a client that sent ahead: keep net/http's buffers
	}
	br := bufio.NewReaderSize(nc, wsBufferSize)
	if n > 0 {
		early, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), nc), wsBufferSize)
		br.Peek(n) // pull the early bytes into the buffer, which coder/websocket keeps
	}
	h.br = br
	return nc, bufio.NewReadWriter(br, bufio.NewWriterSize(nc, wsBufferSize)), nil
}

// deadline makes the connection's write deadline between 0.9 d and d
// from now; false when there is no connection to set it on. It moves the
// deadline only when a tenth of d has passed since it last did, so that
// a busy writer does not reset a runtime timer for every frame.
func (h *hijackWriter) deadline(d time.Duration) bool {
	if h.nc == nil {
		return false
	}
	now := time.Now().UnixNano()
	if last := h.set.Load(); last != 0 && now-last < int64(d/10) && now >= last {
		return true
	}
	h.set.Store(now)
	h.nc.SetWriteDeadline(time.Unix(0, now).Add(d))
	return true
}
