package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/internal/httpapi"
)

// Buffer sizes of a pair. Large bodies bypass the buffers (reads and
// writes at least as large go straight through), so they stay small:
// servers keep up to 256 idle streams per agent.
const (
	pairStreamReadBuf  = 4 << 10
	pairStreamWriteBuf = 8 << 10
	pairLocalReadBuf   = 8 << 10
	pairLocalWriteBuf  = 4 << 10
)

// Timeouts of a pair, those of the http.Server and http.Transport the
// agent ran before.
const (
	pairHeaderTimeout = 30 * time.Second
	pairDialTimeout   = 10 * time.Second
	// pairFresh is how long after an answer the local connection is
	// taken as alive, for a request without a body, without looking at
	// its socket (see localReady): services close idle connections
	// after seconds (Node and Apache 5 s, gunicorn 2 s, nginx 75 s, Go's
	// http.Server never by default), and a close that still comes in
	// between is met by exchange's retry, as a close racing the check
	// always was.
	pairFresh = time.Second
	// pairBodyGrace is how long a finished answer waits for the request
	// body to finish sending before the pair gives up on it (the local
	// service answered without reading it all): http.Transport's 50 ms.
	pairBodyGrace = 50 * time.Millisecond
)

// pair states, guarded by agentServer.mu.
const (
	pairIdle     = iota // waiting for a request
	pairBusy            // between a request's first byte and its answer's end
	pairUpgraded        // a byte splice after 101 Switching Protocols
)

// pair is one stream and the connection to the local service it is
// pinned to (dialed at the first request, and again when the local
// service closed it while idle).
type pair struct {
	s     *agentServer
	st    net.Conn
	state int // guarded by s.mu

	sr *bufio.Reader
	sw *bufio.Writer
	// swOnly is sw without its ReadFrom (see writerOnly), kept here so
	// that passing it as an io.Writer allocates nothing per answer.
	swOnly writerOnly

	lc net.Conn
	lr *bufio.Reader
	lw *bufio.Writer
	// idleSince is when lc's last answer ended; now, when the request
	// being forwarded started.
	idleSince, now time.Time

	cb   countingBody // the answer's body, one at a time
	body *readBody    // the request body being sent, if any
	// head is the request's header as read, when it goes to the local
	// service as it is (see verbatim); headBuf holds it.
	head, headBuf []byte
	// answerHead is the final answer's header as read, when it goes to
	// the server as it is (see verbatimAnswer); answerBuf holds it.
	answerHead, answerBuf []byte

	rec *recording // the exchange the inspector records, if any
}

// setState records the pair's state; false when the server is closing
// and the pair should stop instead.
func (p *pair) setState(state int) bool {
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	if p.s.closing && state != pairBusy {
		return false
	}
	p.state = state
	return true
}

// abort closes both connections, which ends whatever the pair's
// goroutines are blocked on. Called with s.mu held, or by the pair.
// (The pair sets lc under s.mu too.) A stream's Close only half-closes
// it: the deadline ends a read waiting on it, whether or not the server
// closes its end in turn.
func (p *pair) abort() {
	p.st.SetDeadline(time.Unix(1, 0))
	p.st.Close()
	if p.lc != nil {
		p.lc.Close()
	}
}

func (p *pair) serve() {
	p.sr = bufio.NewReaderSize(p.st, pairStreamReadBuf)
	p.sw = bufio.NewWriterSize(p.st, pairStreamWriteBuf)
	p.swOnly = writerOnly{p.sw}
	defer func() {
		p.s.mu.Lock()
		p.abort()
		p.s.mu.Unlock()
		p.dropLocal()
	}()
	for {
		// Idle until a request starts; then it has 30 s to send its
		// header, as http.Server's ReadHeaderTimeout said.
		if _, err := p.sr.Peek(1); err != nil {
			return
		}
		if !p.setState(pairBusy) {
			return
		}
		// A header already received whole needs no deadline (usually
		// it came in one frame): setting one costs two allocations.
		head := p.bufferedHead()
		if head == nil {
			p.st.SetReadDeadline(time.Now().Add(pairHeaderTimeout))
		}
		before := p.sr.Buffered()
		req, err := http.ReadRequest(p.sr)
		if head == nil {
			p.st.SetReadDeadline(time.Time{})
		} else if before-p.sr.Buffered() != len(head) {
			head = nil // not the head that was read
		}
		p.head = head
		if err != nil {
			p.s.o.Logger.Debug("expose: bad request from the server", "err", err)
			return
		}
		if !p.forward(req) {
			return
		}
		p.idleSince = time.Now()
		if !p.setState(pairIdle) {
			return
		}
	}
}

// forward sends req to the local service and its answer back; false when
// the pair must close.
func (p *pair) forward(req *http.Request) bool {
	start := time.Now()
	p.now = start
	out, reqUp := req, ""
	if !p.verbatim(req) {
		p.head = nil
		out, reqUp = p.outgoing(req)
	}
	p.rec = p.s.o.Inspector.record(req, out)
	status, n, keep := p.roundTrip(req, out, reqUp)
	p.rec.done()
	p.rec = nil
	if o := p.s.o; o.Logger.Enabled(context.Background(), slog.LevelInfo) {
		o.Logger.LogAttrs(context.Background(), slog.LevelInfo, "request", slog.String("method", req.Method), slog.String("host", req.Host),
			slog.String("path", req.URL.Path), slog.Int("status", status), slog.Int64("bytes", n),
			slog.Duration("elapsed", time.Since(start).Round(time.Microsecond)), slog.String("client", req.Header.Get("X-Forwarded-For")))
	}
	return keep && !req.Close
}

// roundTrip forwards one exchange; it returns the status and body size
// for the log, and whether the pair may serve another request.
func (p *pair) roundTrip(req, out *http.Request, reqUp string) (status int, n int64, keep bool) {
	resp, wrote, err := p.exchange(out, req.Body == nil || req.Body == http.NoBody)
	switch {
	case errors.Is(err, errStreamFailed):
		p.rec.failed(http.StatusBadGateway, oneLineErr(err))
		p.closeAll(wrote)
		return http.StatusBadGateway, 0, false
	case err != nil:
		return p.badGateway(err, wrote)
	case resp.StatusCode == http.StatusSwitchingProtocols:
		return p.upgrade(resp, reqUp, wrote)
	}
	return p.answer(resp, wrote)
}

// errStreamFailed: writing to the server's stream failed, so no answer
// can be sent on it.
var errStreamFailed = errors.New("the stream to the server failed")

// exchange sends out to the local service and reads its final answer,
// passing 1xx answers on to the server as they come. A request without a
// body on a reused connection that the local service closed meanwhile is
// sent again on a new one, as http.Transport does. wrote, when not nil,
// gets the result of sending the request body, which runs in its own
// goroutine: the local service may answer before it has read it all
// (full duplex).
func (p *pair) exchange(out *http.Request, bodyless bool) (resp *http.Response, wrote chan error, err error) {
	for attempt := 0; ; attempt++ {
		reused := p.lc != nil
		if err := p.localReady(bodyless); err != nil {
			return nil, nil, err
		}
		if !reused {
			attempt = 1 // a connection dialed just now is not retried
		}
		if wrote, err = p.send(out, bodyless); err != nil {
			p.dropLocal()
			if attempt == 0 {
				continue
			}
			return nil, nil, err
		}
		if _, err := p.lr.Peek(1); err != nil {
			// Nothing came back.
			if bodyless && attempt == 0 {
				p.dropLocal()
				continue
			}
			return nil, wrote, err
		}
		resp, err = p.readResponse(out)
		return resp, wrote, err
	}
}

// send writes out to the local connection: at once without a body, in a
// goroutine of its own with one (the result goes to wrote).
func (p *pair) send(out *http.Request, bodyless bool) (wrote chan error, err error) {
	if p.head != nil {
		if _, err := p.lw.Write(p.head); err != nil {
			return nil, err
		}
		return nil, p.lw.Flush()
	}
	if bodyless {
		return nil, writeRequest(out, p.lw)
	}
	p.body = &readBody{rc: out.Body}
	out.Body = p.body
	return sendBody(out, p.lw), nil
}

// sendBody writes out, which has a body, to lw in a goroutine of its own,
// and returns where its result goes. (A function of its own: a closure
// in send would put send's results on the heap for every request.)
func sendBody(out *http.Request, lw *bufio.Writer) chan error {
	wrote := make(chan error, 1)
	go func() { wrote <- writeRequest(out, lw) }()
	return wrote
}

// writeRequest writes out to lw and flushes it.
func writeRequest(out *http.Request, lw *bufio.Writer) error {
	err := out.Write(lw)
	if err == nil {
		err = lw.Flush()
	}
	return err
}

// bufferedHead returns a copy of the request header when p.sr holds it
// whole, or nil.
func (p *pair) bufferedHead() []byte {
	b, _ := p.sr.Peek(p.sr.Buffered())
	i := bytes.Index(b, headerEnd)
	if i < 0 {
		return nil
	}
	p.headBuf = append(p.headBuf[:0], b[:i+len(headerEnd)]...)
	return p.headBuf
}

// verbatim reports whether req goes to the local service as the server
// sent it (p.head), which is what outgoing would write: no inspector
// (it records the rewritten request), the public Host kept, a target
// without a path or query of its own, an HTTP/1.1 request without a
// body, hop-by-hop headers or a query to clean, whose request target
// is written as it was read, and a header of CRLF lines without
// continuations. (The server writes its requests with net/http, so
// that is nearly all of them.) It spares the parsed request's copy and
// its serialising.
func (p *pair) verbatim(req *http.Request) bool {
	o, t := p.s.o, p.s.target
	if p.head == nil || o.Inspector != nil || o.RewriteHost || (t.Path != "" && t.Path != "/") || t.RawPath != "" || t.RawQuery != "" {
		return false
	}
	if req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Body != http.NoBody || len(req.TransferEncoding) > 0 || req.Close {
		return false
	}
	if !strings.HasPrefix(req.RequestURI, "/") || cleanQueryParams(req.URL.RawQuery) != req.URL.RawQuery || req.URL.RequestURI() != req.RequestURI {
		return false
	}
	return plainHead(p.head, req.Header)
}

// plainHead reports whether raw, a message's header as read, with h its
// parsed fields, goes on as it is: no hop-by-hop field, and CRLF lines
// without continuations (what rewriting it would write).
func plainHead(raw []byte, h http.Header) bool {
	for _, k := range httpapi.HopHeaders {
		if _, ok := h[k]; ok {
			return false
		}
	}
	return bytes.Count(raw, lf) == bytes.Count(raw, crlf) && !bytes.Contains(raw, crlfSpace) && !bytes.Contains(raw, crlfTab)
}

var (
	lf        = []byte("\n")
	crlf      = []byte("\r\n")
	crlfSpace = []byte("\r\n ")
	crlfTab   = []byte("\r\n\t")
)

var headerEnd = []byte("\r\n\r\n")

// readResponse reads the local service's answer to out, relaying 100
// Continue and the like to the server until a final one (or 101) comes.
func (p *pair) readResponse(out *http.Request) (*http.Response, error) {
	resp, err := p.readAnswerHead(out)
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		if err = resp.Write(p.sw); err == nil {
			err = p.sw.Flush()
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errStreamFailed, err)
		}
		resp, err = p.readAnswerHead(out)
	}
	return resp, err
}

// readAnswerHead reads an answer's header, keeping its bytes in
// p.answerHead when they came whole (see verbatimAnswer), else nil.
func (p *pair) readAnswerHead(out *http.Request) (*http.Response, error) {
	p.answerHead = nil
	b, _ := p.lr.Peek(p.lr.Buffered())
	if i := bytes.Index(b, headerEnd); i >= 0 && p.s.o.Inspector == nil {
		p.answerHead = append(p.answerBuf[:0], b[:i+len(headerEnd)]...)
		p.answerBuf = p.answerHead
	}
	before := p.lr.Buffered()
	resp, err := http.ReadResponse(p.lr, out)
	if before-p.lr.Buffered() != len(p.answerHead) {
		p.answerHead = nil // not the header that was read
	}
	return resp, err
}

// copyBufs lends the buffers answers' bodies are copied through: one per
// answer being sent, not one per pair.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// verbatimAnswer reports whether resp goes to the server as the local
// service sent it (p.answerHead, then the body's bytes), which is what
// the rewriting would send: no inspector, an HTTP/1.1 answer with a
// declared length that keeps the connection, without hop-by-hop
// headers, of CRLF lines without continuations. It spares the answer's
// serialising.
func (p *pair) verbatimAnswer(resp *http.Response) bool {
	h := p.answerHead
	if h == nil || resp.ProtoMajor != 1 || resp.ProtoMinor != 1 || resp.Close || resp.ContentLength < 0 || len(resp.TransferEncoding) > 0 {
		return false
	}
	return plainHead(h, resp.Header)
}

// answer relays a final answer to the server and settles the request
// body's goroutine; the pair stays for the next request unless either
// side asked to close.
func (p *pair) answer(resp *http.Response, wrote chan error) (status int, n int64, keep bool) {
	p.cb = countingBody{body: resp.Body, lr: p.lr, sw: p.sw, length: resp.ContentLength}
	cb := &p.cb
	var err error
	if p.verbatimAnswer(resp) {
		_, err = p.sw.Write(p.answerHead)
		if err == nil && resp.Body != http.NoBody {
			buf := copyBufs.Get().(*[]byte)
			_, err = io.CopyBuffer(&p.swOnly, cb, *buf)
			copyBufs.Put(buf)
			if err == nil && cb.n != resp.ContentLength {
				err = io.ErrUnexpectedEOF
			}
			resp.Body.Close()
		}
	} else {
		httpapi.RemoveHopByHop(resp.Header)
		if c := p.rec.answered(resp.StatusCode, resp.Header); c != nil {
			cb.tee = c
		}
		if resp.Body != http.NoBody {
			resp.Body = cb
		}
		err = resp.Write(&p.swOnly)
	}
	if err == nil {
		// Kept before the answer's last bytes leave: whoever got the
		// answer finds it in the inspector.
		p.rec.done()
		p.rec = nil
		err = p.sw.Flush()
	}
	if err != nil {
		p.closeAll(wrote)
		return resp.StatusCode, cb.n, false
	}
	if wrote != nil && !p.bodySent(wrote) {
		p.closeAll(nil)
		return resp.StatusCode, cb.n, false
	}
	if resp.Close {
		p.dropLocal()
		return resp.StatusCode, cb.n, false
	}
	return resp.StatusCode, cb.n, true
}

// bodySent settles the request body's goroutine once the answer is out,
// and reports whether the stream may carry another request. The body
// has pairBodyGrace to finish sending (a local service that answered
// without reading it all may never read the rest); past that, or when
// sending it failed, the local connection is closed, which ends the
// goroutine at once, and the stream stays when the body was read whole
// from it. So a goroutine slow to report on a loaded machine costs a new
// local connection, never the stream: the server may already have sent
// its next request on it, which a close would fail (the server's
// transport cannot send most requests again).
func (p *pair) bodySent(wrote chan error) bool {
	select {
	case err := <-wrote:
		if err == nil {
			return true
		}
	default:
		t := time.NewTimer(pairBodyGrace)
		select {
		case err := <-wrote:
			t.Stop()
			if err == nil {
				return true
			}
		case <-t.C:
			p.s.mu.Lock()
			p.lc.Close()
			p.s.mu.Unlock()
			<-wrote
		}
	}
	p.dropLocal()
	return p.body.whole.Load()
}

// readBody is a request body being sent to the local service: it notes
// when it was read whole (see bodySent).
type readBody struct {
	rc    io.ReadCloser
	whole atomic.Bool
}

func (b *readBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.whole.Store(true)
	}
	return n, err
}

func (b *readBody) Close() error { return b.rc.Close() }

// closeAll ends the pair in the middle of an exchange and waits for the
// request body's goroutine, if any (wrote, or nil).
func (p *pair) closeAll(wrote chan error) {
	p.s.mu.Lock()
	p.abort()
	p.s.mu.Unlock()
	if wrote != nil {
		<-wrote
	}
	p.dropLocal()
}

// badGateway answers 502 with the text the agent always gave, and closes
// the pair (the request body may not have been read).
func (p *pair) badGateway(err error, wrote chan error) (int, int64, bool) {
	if p.lc != nil {
		p.s.mu.Lock()
		p.lc.Close()
		p.s.mu.Unlock()
	}
	msg := fmt.Sprintf("postern expose: the local service at %s cannot be reached: %s", p.s.target.Host, oneLineErr(err))
	p.rec.failed(http.StatusBadGateway, msg)
	p.rec.done()
	p.rec = nil
	resp := &http.Response{
		StatusCode: http.StatusBadGateway, ProtoMajor: 1, ProtoMinor: 1, Close: true,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		ContentLength: int64(len(msg)), Body: io.NopCloser(strings.NewReader(msg)),
	}
	if resp.Write(p.sw) == nil {
		p.sw.Flush()
	}
	p.closeAll(wrote)
	return http.StatusBadGateway, int64(len(msg)), false
}

// upgrade relays a 101 answer, then splices the stream and the local
// connection until either side ends.
func (p *pair) upgrade(resp *http.Response, reqUp string, wrote chan error) (int, int64, bool) {
	resUp := httpapi.UpgradeType(resp.Header)
	if !strings.EqualFold(reqUp, resUp) {
		return p.badGateway(fmt.Errorf("backend tried to switch protocol %q when %q was requested", resUp, reqUp), wrote)
	}
	if wrote != nil {
		if err := <-wrote; err != nil {
			p.closeAll(nil)
			return http.StatusSwitchingProtocols, 0, false
		}
	}
	resp.Body = nil
	p.rec.answered(resp.StatusCode, resp.Header)
	p.rec.done() // now: the splice may last
	p.rec = nil
	if err := resp.Write(p.sw); err != nil || p.sw.Flush() != nil {
		p.closeAll(nil)
		return http.StatusSwitchingProtocols, 0, false
	}
	if !p.setState(pairUpgraded) {
		p.closeAll(nil)
		return http.StatusSwitchingProtocols, 0, false
	}
	// The splice reads both buffered readers, so nothing already
	// received is lost.
	done := make(chan struct{}, 2)
	go func() { io.Copy(p.lc, p.sr); done <- struct{}{} }()
	go func() { io.Copy(p.st, p.lr); done <- struct{}{} }()
	<-done
	p.closeAll(nil) // ends the other direction
	<-done
	return http.StatusSwitchingProtocols, 0, false
}

// what the stream's writer holds whenever reading on would wait for the
// local service: an answer that is there at once leaves in one go, one
// that trickles (an event stream) leaves as it comes. (A reverse proxy
// flushes streams at every write and holds others up to its flush
// interval; this needs no timer.)
type countingBody struct {
	body io.ReadCloser
	lr   *bufio.Reader
	sw   *bufio.Writer
	n    int64
	tee  io.Writer // the inspector's copy, if any
	// length is the declared body length (-1: unknown). Once it is all
	// read the next read cannot wait, so nothing is flushed before it:
	// the answer's end leaves with the final flush, after the inspector
	// kept the exchange.
	length int64
}

func (b *countingBody) Read(buf []byte) (int, error) {
	if b.lr.Buffered() == 0 && (b.length < 0 || b.n < b.length) {
		if err := b.sw.Flush(); err != nil {
			return 0, err
		}
	}
	n, err := b.body.Read(buf)
	b.n += int64(n)
	if b.tee != nil {
		b.tee.Write(buf[:n])
	}
	return n, err
}

func (b *countingBody) Close() error { return b.body.Close() }

// writerOnly hides the bufio.Writer's ReadFrom, which would read into
// the buffer countingBody flushes.
type writerOnly struct{ io.Writer }
