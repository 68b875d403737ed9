package expose

import (
	"context"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/httpapi"
)

// wsStream is one user websocket relayed message by message to a
// brickchain agent. What the agent sends waits in a queue bounded in bytes
// (WSBufferBytes, at least one message); a user too slow to take it is
// disconnected rather than buffered without bound. What the user sends
// goes to the agent's writer directly, so a slow agent slows the user.
type wsStream struct {
	c    *bcConn
	id   string
	resp chan brickchain.Frame // the ws-response

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
	teardown  func()
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

func (st *wsStream) fromAgent(f brickchain.Frame) {
	switch f.Type {
	case brickchain.TypeWSResponse:
		select {
		case st.resp <- f:
		default: // a second answer means nothing
		}
	case brickchain.TypeWSMessage:
		var typ websocket.MessageType
		switch f.MessageType {
		case brickchain.MessageText:
			typ = websocket.MessageText
		case brickchain.MessageBinary:
			typ = websocket.MessageBinary
		default:
			return
		}
		st.mu.Lock()
		if st.queued+len(f.Body) > st.c.s.opts.WSBufferBytes && len(st.queue) > 0 {
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
	case brickchain.TypeWSTeardown:
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
	o := st.c.s.opts
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

// serveWebsocket relays a user's websocket to the agent: ws-request, then
// the user's upgrade only once the agent said ok (a refusal becomes 502
// with the agent's error), then ws-message frames both ways until either
// side tears down.
func (c *bcConn) serveWebsocket(w http.ResponseWriter, r *http.Request, name, path, rawQuery string, hdr http.Header) {
	s := c.s
	if !s.track(func() {}) {
		httpapi.WritePlain(w, r, errClosing)
		return
	}
	defer s.wg.Done()
	st := &wsStream{c: c, id: brickchain.NewID(), resp: make(chan brickchain.Frame, 1), notify: make(chan struct{}, 1), done: make(chan struct{})}
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		httpapi.WritePlain(w, r, noAgent(name))
		return
	}
	c.streams[st.id] = st
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.streams, st.id)
		c.mu.Unlock()
	}()
	teardown := func() {
		ctx, cancel := context.WithTimeout(c.ctx, s.opts.WriteTimeout)
		defer cancel()
		c.send(ctx, brickchain.WSTeardown{Base: brickchain.NewBase(brickchain.TypeWSTeardown, st.id)})
	}
	st.teardown = teardown

	ctx, cancel := context.WithTimeout(r.Context(), s.opts.ResponseTimeout)
	defer cancel()
	req := brickchain.WSRequest{
		Base:    brickchain.NewBase(brickchain.TypeWSRequest, st.id),
		URL:     path,
		Query:   rawQuery,
		Headers: brickchain.FirstValues(hdr, wsSkipHeaders...),
	}
	var f brickchain.Frame
	err := c.send(ctx, req)
	if err == nil {
		select {
		case f = <-st.resp:
		case <-st.done:
			err = httpapi.Errorf(http.StatusBadGateway, "the agent closed the websocket before accepting it")
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err == ctx.Err() && err != nil {
		if r.Context().Err() != nil {
			teardown()
			s.m.request(transportBrickchain, "ws_canceled")
			return
		}
		err = &httpapi.Error{Status: http.StatusGatewayTimeout, Message: "timeout"}
		teardown()
	}
	if err == nil && !f.OK {
		msg := f.Error
		if msg == "" {
			msg = "no reason given"
		}
		err = httpapi.Errorf(http.StatusBadGateway, "the agent refused the websocket: %s", msg)
	}
	if err != nil {
		s.m.request(transportBrickchain, "ws_refused")
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
		teardown()
		return
	}
	s.m.request(transportBrickchain, "ws_upgraded")
	uc.SetReadLimit(s.opts.MaxFrameBytes)
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
		mt := brickchain.MessageText
		if typ == websocket.MessageBinary {
			mt = brickchain.MessageBinary
		}
		// Bodies are JSON strings on this wire: text passes as it is;
		// binary payloads that are not valid UTF-8 are altered (invalid
		// bytes become U+FFFD), as they were with the original.
		m := brickchain.WSMessage{Base: brickchain.NewBase(brickchain.TypeWSMessage, st.id), MessageType: mt, Body: string(data)}
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
