package gcr

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay/gcr/wire"
)

// Streamed response bodies.
//
// A posted HttpResponse is an ordinary protobuf message: its fields may
// come in any order. When the id comes before a large body (postern
// relay sends it so, see wire.AppendStreamHead), the server knows whose
// body it is before the body arrives, and relays it to the user as it
// comes, through one small buffer, instead of holding the whole message:
// a download goes from the relay client to the user as through a reverse
// proxy, without a buffer of the body's size or a round trip per chunk.
// The fields after the body (trailers) are read once it has gone. Any
// other message is read whole first, as before; a server that reads
// messages whole (the original) decodes these the same way.
//
// Poll answers carry wire.StreamHeader when the node relays such bodies
// as they come, so that the relay client sends large bodies in one
// message only to a server that will not hold them. A node that shares
// its backends with others (a directory) does not say so: a message
// posted to a node that does not hold its request is read whole and
// forwarded, within MaxResponseMessageBytes.

const (
	// streamMinBytes is the smallest body relayed as it comes; smaller
	// ones are read with their message.
	streamMinBytes = 64 << 10
	// streamStartBytes bounds the start of a message read to find its
	// body: the fields before a body relayed as it comes must fit.
	streamStartBytes = 64 << 10
	// streamTailBytes bounds the fields after a streamed body.
	streamTailBytes = 64 << 10
	// streamCopyBytes is the largest buffer a streamed body is relayed
	// through. Large: a read and a write per MiB cost a download through
	// the relay about a third less CPU than with 128 KiB, and a relay
	// client that sends in blocks as large (postern relay does) is read
	// in one go.
	streamCopyBytes = 1 << 20
)

// readStart reads the start of a posted message, into a pooled buffer of
// streamStartBytes (at most limit+1), until it holds the body field's tag
// and length, or the whole message, or the buffer is full.
func readStart(body io.Reader, limit int64) ([]byte, error) {
	b := getMessage(int(min(streamStartBytes, limit+1)))[:0]
	for len(b) < cap(b) {
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if _, _, _, ok := wire.ResponseBody(b); ok {
			break
		}
	}
	return b, nil
}

// serveStream relays the body of a posted message as it comes when its
// start says whose it is (the id before the body) and the body is large.
// handled is false when it did nothing of the sort: the message is then
// read whole (it continues after start).
func (g *Relay) serveStream(w http.ResponseWriter, r *http.Request, rc *http.ResponseController, start []byte) (handled bool, err error) {
	tag, at, n, ok := wire.ResponseBody(start)
	if !ok || n < streamMinBytes || at+n <= len(start) {
		return false, nil
	}
	head, err := wire.UnmarshalResponse(start[:tag])
	if err != nil || !head.HasID || (head.HasStatus && head.StatusCode == http.StatusSwitchingProtocols) {
		// The whole message says what is wrong; an upgraded connection's
		// bytes go in messages read whole.
		return false, nil
	}
	// A post refused from its start is answered at once: the rest of a
	// large body is not read, so the connection closes after the answer
	// (net/http would otherwise read on before answering).
	refuse := func(err error) (bool, error) {
		w.Header().Set("Connection", "close")
		return true, err
	}
	name, ok := nameOfID(head.ID)
	if !ok {
		return refuse(invalidID(head.ID))
	}
	if !g.allow(r, auth.Serve, name) {
		return refuse(forbidden(auth.Serve, name))
	}
	p := g.lookup(head.ID)
	if p == nil && !g.hub.Shared() {
		return refuse(invalidID(head.ID)) // no other node can hold it
	}
	if p == nil || p.upgraded.Load() {
		return false, nil // read whole (and forwarded, if another node holds it)
	}
	s := &bodyStream{
		n: n, left: n, have: start[at:], body: r.Body,
		deadline: rc.SetReadDeadline, timeout: g.opts.InactiveRequestTimeout, renewed: time.Now(),
		consumed: make(chan struct{}), tail: make(chan tailMsg, 1),
	}
	s.cond.L = &s.mu
	if spliceable(r, len(start), at, n) {
		if hj, err := hijack(rc, r, at, n, g.opts.InactiveRequestTimeout); err == nil {
			// The rest of the body: what net/http read ahead, then the
			// connection.
			s.hj, s.body, s.deadline = hj, hj.br, hj.conn.SetReadDeadline
			hj.answer(w, r, g.relayStream(w, r, p, head, s))
			return true, nil
		}
	}
	return true, g.relayStream(w, r, p, head, s)
}

// relayStream hands the body stream s of the post r for p to the user
// side, waits until it has been read, and reads the fields after it.
func (g *Relay) relayStream(w http.ResponseWriter, r *http.Request, p *pending, head *wire.Response, s *bodyStream) error {
	refuse := func(err error) error {
		w.Header().Set("Connection", "close")
		return err
	}
	p.touch()
	select {
	case p.chunks <- chunk{msg: head, stream: s}:
	case <-p.done:
		return refuse(invalidID(head.ID))
	case <-r.Context().Done():
		return nil
	}
	// The user side reads the body from the poster's connection; this
	// handler waits, and returns only once nothing reads it any more.
	select {
	case <-s.consumed:
	case <-p.done:
		s.abandon()
		return invalidID(head.ID)
	case <-p.userGone:
		// The user side may be blocked reading this post's body: it is
		// not watching, so the request ends here.
		s.abandon()
		p.gone()
		return invalidID(head.ID)
	case <-r.Context().Done():
		s.abandon()
		return nil
	}
	if s.err != nil {
		s.abandon()
		if errors.Is(s.err, os.ErrDeadlineExceeded) {
			w.Header().Set("Connection", "close")
			return httpapi.ErrBodyTimeout
		}
		if s.userErr {
			return invalidID(head.ID) // the user went away: the relay client stops
		}
		return httpapi.ErrBodyIncomplete
	}
	var tail []byte
	var err error
	if s.hj != nil {
		s.deadline(time.Now().Add(s.timeout))
		tail, err = s.hj.readTail()
	} else {
		tail, err = readTail(r.Body)
	}
	var t *wire.Response
	if err == nil {
		t, err = wire.UnmarshalResponse(tail)
		if err == nil && (t.Body != nil || (t.HasID && t.ID != head.ID)) {
			err = errors.New("a body or another id after a streamed body")
		}
	}
	if err != nil {
		s.tail <- tailMsg{err: errors.New("relay client's message cut after its body")}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			w.Header().Set("Connection", "close")
			return httpapi.ErrBodyTimeout
		}
		return httpapi.Errorf(http.StatusBadRequest, "Invalid HttpResponse: %v", err)
	}
	t.EOF = t.EOF || head.EOF
	s.tail <- tailMsg{msg: t}
	s.deadline(time.Time{})
	if s.hj != nil {
		return nil // hj.answer says ok
	}
	return writeOK(w)
}

// readTail reads what follows a streamed body, up to streamTailBytes.
func readTail(body io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(body, streamTailBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > streamTailBytes {
		return nil, errors.New("fields after the body too large")
	}
	return b, nil
}

// tailMsg is what follows a streamed body: its fields, or why they could
// not be read.
type tailMsg struct {
	msg *wire.Response
	err error
}

// bodyStream is a posted body being relayed as it arrives: the user side
// reads it (Read), the handler of the post waits until it is read
// (consumed) and then reads the fields after it (tail).
type bodyStream struct {
	n    int       // the body's length
	left int       // bytes still to read; the user side's
	have []byte    // read with the message's start
	body io.Reader // the rest, from the poster's connection

	// hj is the poster's connection when it was taken over (hijack): the
	// rest of the body is read from it, spliced to the user when it can.
	hj *hijacked

	// The read deadline on the poster's connection is pushed back as the
	// body arrives, so that it bounds silence, not the whole transfer.
	deadline func(time.Time) error
	timeout  time.Duration
	renewed  time.Time

	consumed chan struct{} // closed when the user side stops reading
	once     sync.Once
	err      error // why it stopped before the end; read after consumed
	userErr  bool  // err is the user side's (it went away)
	tail     chan tailMsg

	mu      sync.Mutex
	cond    sync.Cond // signalled when a read returns
	reading bool
	closed  bool // the handler gave up: no more reads
}

var errStreamAbandoned = errors.New("relay client's post abandoned")

// Read reads the body; io.EOF at its end.
func (s *bodyStream) Read(b []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	if len(b) > s.left {
		b = b[:s.left]
	}
	s.mu.Lock()
	if s.closed {
		// The handler has returned: have's buffer is back in its pool.
		s.mu.Unlock()
		return 0, errStreamAbandoned
	}
	if len(s.have) > 0 {
		n := copy(b, s.have)
		s.have = s.have[n:]
		s.left -= n
		s.mu.Unlock()
		return n, nil
	}
	s.reading = true
	s.mu.Unlock()
	if now := time.Now(); now.Sub(s.renewed) > s.timeout/4 {
		s.renewed = now
		s.deadline(now.Add(s.timeout))
	}
	n, err := s.body.Read(b)
	s.mu.Lock()
	s.reading = false
	s.cond.Broadcast()
	s.mu.Unlock()
	s.left -= n
	switch {
	case s.left == 0:
		return n, nil
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// done says the user side stopped reading: at the end (nil), or for err;
// user marks an error of the user side (it went away).
func (s *bodyStream) done(err error, user bool) {
	s.once.Do(func() {
		s.err, s.userErr = err, user
		close(s.consumed)
	})
}

// abandon stops the reading for good, unblocking a read in progress,
// and returns once none is. A user side waiting for the fields after the
// body learns that none will come.
func (s *bodyStream) abandon() {
	s.deadline(time.Unix(1, 0))
	s.mu.Lock()
	s.closed = true
	for s.reading {
		s.cond.Wait()
	}
	s.mu.Unlock()
	select {
	case s.tail <- tailMsg{err: errStreamAbandoned}:
	default: // the one message the channel holds is there already
	}
}

// copyStream writes a streamed body to w through a pooled buffer (of
// the body's size, up to streamCopyBytes), as it arrives: a write per
// read, a flush when a read found no more waiting. It reports the bytes
// written and whether an error was w's.
func (r *bodyReader) copyStream(w io.Writer, f interface{ Flush() error }) (n int64, userErr bool, err error) {
	s := r.stream
	buf := getMessage(max(min(s.n, streamCopyBytes), 1))
	defer putMessage(buf)
	if rf, ok := w.(io.ReaderFrom); ok && s.hj != nil && s.hj.src != nil && r.lengthKnown() {
		// What was read already goes first, the rest is spliced.
		n, userErr, err = r.copyReads(w, nil, buf, s.readAhead)
		if err == nil && s.left > 0 {
			var k int64
			k, userErr, err = r.spliceStream(rf)
			n += k
		}
		return n, userErr, err
	}
	k, userErr, err := r.copyReads(w, f, buf, nil)
	return n + k, userErr, err
}

// copyReads writes what the stream's reads into buf return to w, while
// more reports true (nil: to the end), flushing f (when not nil) when a
// read found no more waiting.
func (r *bodyReader) copyReads(w io.Writer, f interface{ Flush() error }, buf []byte, more func() bool) (n int64, userErr bool, err error) {
	s := r.stream
	for more == nil || more() {
		k, rerr := s.Read(buf)
		if k > 0 {
			r.p.touch()
			wk, werr := w.Write(buf[:k])
			n += int64(wk)
			if werr != nil {
				return n, true, werr
			}
			if f != nil && k < len(buf) && s.left > 0 {
				if err := f.Flush(); err != nil {
					return n, true, err
				}
			}
		}
		if rerr == io.EOF {
			return n, false, nil
		}
		if rerr != nil {
			return n, false, rerr
		}
	}
	return n, false, nil
}

// readStream is Read for a streamed body.
func (r *bodyReader) readStream(b []byte) (int, error) {
	n, err := r.stream.Read(b)
	if n > 0 {
		r.p.touch()
	}
	return n, err
}

// endStream waits for the fields after a streamed body and takes them in
// (trailers, the end).
func (r *bodyReader) endStream() error {
	s := r.stream
	s.done(nil, false)
	select {
	case t := <-s.tail:
		r.stream = nil
		if t.err != nil {
			return t.err
		}
		r.absorb(chunk{msg: t.msg})
		return nil
	case <-r.p.done:
		return r.p.endErr()
	case <-r.p.userGone:
		return r.p.gone()
	}
}
