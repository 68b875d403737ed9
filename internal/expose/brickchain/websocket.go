package brickchain

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay"
)

// wsStream is one user websocket relayed message by message to a
// brickchain agent. What the agent sends waits in a queue bounded in bytes
// (WSBufferBytes, at least one message); a user too slow to take it is
// disconnected rather than buffered without bound. What the user sends
// goes to the agent's writer directly, so a slow agent slows the user.
type wsStream struct {
	c    *conn
	id   string
	resp chan Frame // the ws-response

	mu     sync.Mutex
	queue  []wsMsg
	queued int
	notify chan struct{}

	done      chan struct{}
	endOnce   sync.Once
	code      websocket.StatusCode
	reason    string
	tellAgent bool // send ws-teardown: the end did not come from the agent
	flush     bool // deliver what is queued before closing
	tornDown  sync.Once
}

// tell sends the agent ws-teardown once, when the end was not its own.
func (st *wsStream) tell() {
	if st.tellAgent && st.c.ctx.Err() == nil {
		st.tornDown.Do(st.teardown)
	}
}

type wsMsg struct {
	typ  websocket.MessageType
	body string
}

func (st *wsStream) fromAgent(f Frame) {
	switch f.Type {
	case TypeWSResponse:
		select {
		case st.resp <- f:
		default: // a second answer means nothing
		}
	case TypeWSMessage:
		var typ websocket.MessageType
		switch f.MessageType {
		case MessageText:
			typ = websocket.MessageText
		case MessageBinary:
			typ = websocket.MessageBinary
		default:
			return
		}
		st.mu.Lock()
		if st.queued+len(f.Body) > st.c.t.opts.WSBufferBytes && len(st.queue) > 0 {
			st.mu.Unlock()
			st.end(websocket.StatusTryAgainLater, "client too slow: messages dropped", true)
			return
		}
		st.queue = append(st.queue, wsMsg{typ, f.Body})
		st.queued += len(f.Body)
		st.mu.Unlock()
		select {
		case st.notify <- struct{}{}:
		default:
		}
	case TypeWSTeardown:
		st.mu.Lock()
		st.flush = true
		st.mu.Unlock()
		st.end(websocket.StatusNormalClosure, "", false)
	}
}

// end closes the stream once; later calls change nothing.
func (st *wsStream) end(code websocket.StatusCode, reason string, tellAgent bool) {
	st.endOnce.Do(func() {
		st.code, st.reason, st.tellAgent = code, reason, tellAgent
		close(st.done)
	})
}

func (st *wsStream) take() []wsMsg {
	st.mu.Lock()
	defer st.mu.Unlock()
	q := st.queue
	st.queue, st.queued = nil, 0
	return q
}

// writeLoop writes the agent's messages to the user until the stream
// ends, then closes the user's websocket with the stream's status.
func (st *wsStream) writeLoop(uc *websocket.Conn) {
	o := st.c.t.opts
	write := func(msgs []wsMsg) bool {
		for _, m := range msgs {
			ctx, cancel := context.WithTimeout(st.c.ctx, o.WriteTimeout)
			err := uc.Write(ctx, m.typ, []byte(m.body))
			cancel()
			if err != nil {
				st.end(websocket.StatusGoingAway, "", true)
				return false
			}
		}
		return true
	}
	for {
		select {
		case <-st.notify:
			if !write(st.take()) {
				uc.CloseNow()
				return
			}
		case <-st.done:
			st.mu.Lock()
			flush := st.flush
			st.mu.Unlock()
			if flush && !write(st.take()) {
				uc.CloseNow()
				return
			}
			if st.c.ctx.Err() != nil {
				uc.CloseNow()
				return
			}
			st.tell() // before the close handshake, which may wait
			uc.Close(st.code, st.reason)
			return
		}
	}
}

var wsSkipHeaders = []string{"Connection", "Upgrade", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions"}

// ServeWebsocket relays a user's websocket to the agent: ws-request, then
// the user's upgrade only once the agent said ok (a refusal becomes 502
// with the agent's error), then ws-message frames both ways until either
// side tears down. t is the target the front door would give the hub: its
// Path and RawQuery go to the agent, its Local edits what the agent sees
// (postern's tokens removed), and its NoBackend answers when the agent's
// connection ended meanwhile.
func (b *backend) ServeWebsocket(w http.ResponseWriter, r *http.Request, t relay.Target) {
	c := b.c
	if !c.t.live.Hold() {
		httpapi.WritePlain(w, r, errClosing)
		return
	}
	defer c.t.live.Release()
	st := c.openStream()
	if st == nil {
		e := &httpapi.Error{Status: http.StatusBadGateway, Message: "no backend"}
		if t.NoBackend != nil {
			e = t.NoBackend(t.Name)
		}
		httpapi.WritePlain(w, r, e)
		return
	}
	defer c.closeStream(st)
	out := &http.Request{Method: r.Method, Header: r.Header.Clone(), URL: &url.URL{Path: t.Path, RawPath: t.RawPath, RawQuery: t.RawQuery}}
	out.Header.Del(relay.ForwardedHeader)
	if t.Local != nil {
		t.Local(out)
	}
	if err := st.open(r, out); err != nil {
		if err == errUserGone {
			return
		}
		c.t.count.Request("ws_refused")
		e := httpapi.ToError(r, err)
		if e == nil {
			e = errAgentGone
		}
		httpapi.WritePlain(w, r, e)
		return
	}
	uc, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		InsecureSkipVerify: true, // as the original: the agent's service decides
		Subprotocols:       subprotocols(r.Header),
	})
	if err != nil {
		st.teardown()
		return
	}
	c.t.count.Request("ws_upgraded")
	uc.SetReadLimit(c.t.opts.MaxFrameBytes)
	st.relay(uc)
}

// openStream adds a stream to the connection; nil when it has ended.
func (c *conn) openStream() *wsStream {
	st := &wsStream{c: c, id: NewID(), resp: make(chan Frame, 1), notify: make(chan struct{}, 1), done: make(chan struct{})}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx.Err() != nil {
		return nil
	}
	c.streams[st.id] = st
	return st
}

func (c *conn) closeStream(st *wsStream) {
	c.mu.Lock()
	delete(c.streams, st.id)
	c.mu.Unlock()
}

// teardown tells the agent the stream is over.
func (st *wsStream) teardown() {
	ctx, cancel := context.WithTimeout(st.c.ctx, st.c.t.opts.WriteTimeout)
	defer cancel()
	st.c.send(ctx, WSTeardown{Base: NewBase(TypeWSTeardown, st.id)})
}

// errUserGone: the user went away while the agent was asked.
var errUserGone = errors.New("the user went away")

// open asks the agent for the websocket out describes (ws-request) and
// waits for its ws-response, at most ResponseTimeout. It returns nil when
// the agent accepted, errUserGone when the user went away meanwhile (the
// caller answers nothing then).
func (st *wsStream) open(r *http.Request, out *http.Request) error {
	c := st.c
	ctx, cancel := context.WithTimeout(r.Context(), c.t.opts.ResponseTimeout)
	defer cancel()
	req := WSRequest{
		Base:    NewBase(TypeWSRequest, st.id),
		URL:     out.URL.Path,
		Query:   out.URL.RawQuery,
		Headers: FirstValues(out.Header, wsSkipHeaders...),
	}
	var f Frame
	err := c.send(ctx, req)
	if err == nil {
		select {
		case f = <-st.resp:
		case <-st.done:
			return httpapi.Errorf(http.StatusBadGateway, "the agent closed the websocket before accepting it")
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	switch {
	case err != nil && err == ctx.Err():
		st.teardown()
		if r.Context().Err() != nil {
			c.t.count.Request("ws_canceled")
			return errUserGone
		}
		return &httpapi.Error{Status: http.StatusGatewayTimeout, Message: "timeout"}
	case err != nil:
		return err
	case !f.OK:
		msg := f.Error
		if msg == "" {
			msg = "no reason given"
		}
		return httpapi.Errorf(http.StatusBadGateway, "the agent refused the websocket: %s", msg)
	}
	return nil
}

// relay carries messages both ways until either side ends: the user's
// to the agent's writer from here, the agent's to the user from
// writeLoop.
func (st *wsStream) relay(uc *websocket.Conn) {
	c := st.c
	var wg sync.WaitGroup
	wg.Go(func() { st.writeLoop(uc) })
	for {
		typ, data, err := uc.Read(c.ctx)
		if err != nil {
			code := websocket.CloseStatus(err)
			if code == -1 || code == websocket.StatusNoStatusRcvd {
				code = websocket.StatusNormalClosure
			}
			st.end(code, "", true)
			break
		}
		mt := MessageText
		if typ == websocket.MessageBinary {
			mt = MessageBinary
		}
		// Bodies are JSON strings on this wire: text passes as it is;
		// binary payloads that are not valid UTF-8 are altered (invalid
		// bytes become U+FFFD), as they were with the original.
		m := WSMessage{Base: NewBase(TypeWSMessage, st.id), MessageType: mt, Body: string(data)}
		if c.send(c.ctx, m) != nil {
			st.end(websocket.StatusGoingAway, "agent disconnected", false)
			break
		}
	}
	wg.Wait()
	st.tell()
}

// subprotocols lists the subprotocols the user offered; the first is
// selected, since the agent's answer names none.
func subprotocols(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Sec-Websocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	if len(out) > 1 {
		out = out[:1]
	}
	return out
}
