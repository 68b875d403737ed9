package client

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/postern/postern/internal/relay/gcr/wire"
)

// A streamed body (of unknown length, or longer than MaxChunkSize) is
// read by one goroutine straight into chunk buffers, BlockSize at a time,
// and posted by the request's own goroutine in chunks that are slices of
// those buffers: the bytes are not copied on their way from the backend
// to the post. What is read and not yet posted is a list of segments of
// the buffers; a chunk is the oldest segment, taken whole. The reader
// stops reading while MaxChunkSize bytes wait (backpressure, bounded
// memory: at most two buffers per stream, one being posted and one being
// filled).
//
// When a chunk goes is the original's rule by default: as soon as more
// than MaxChunkSize bytes wait, else at the next chunk delay; an empty
// chunk after KeepAliveTicks idle delays. With EagerChunks, whatever
// waits goes as soon as the previous chunk was answered.

// chunkBuf is a chunk buffer, counted: the reader holds it while it
// reads into it, and each segment of it until the segment is posted.
type chunkBuf struct {
	b    []byte
	refs int
}

type segment struct {
	buf        *chunkBuf
	start, end int
}

// streamer is the state the reader and the poster share, under mu.
type streamer struct {
	c *Client

	mu      sync.Mutex
	space   sync.Cond // signalled when the poster takes a segment, or stops
	segs    []segment // read and not yet taken, oldest first
	pending int       // bytes in segs
	cur     *chunkBuf // buffer the reader reads into; nil: none yet
	w       int       // where the next read goes in cur
	ended   bool      // the body ended (an error ends it too, as in the original)
	stopped bool      // the poster gave up: the reader stops

	avail chan struct{} // capacity 1: the reader read something, or ended
}

// stream relays a streamed body and returns the bytes posted.
func (c *Client) stream(ctx context.Context, first *wire.Response, hresp *http.Response, start time.Time, streams bool) (n int64) {
	s := &streamer{c: c, avail: make(chan struct{}, 1)}
	s.space.L = &s.mu
	c.wg.Go(func() { s.read(hresp.Body) })
	defer func() {
		s.stop()
		// Unblocks the reader, if it still waits for the backend.
		hresp.Body.Close()
	}()
	next := first
	delay := time.NewTimer(c.o.ChunkDelay)
	defer delay.Stop()
	ticks := 0
	for {
		seg, ended, ok := s.take()
		if !ok {
			// Nothing to post yet: wait for data or the next tick.
			select {
			case <-s.avail:
				continue
			case <-ctx.Done():
				return n
			case <-delay.C:
				delay.Reset(c.o.ChunkDelay)
				ticks++
				if seg, ended, ok = s.takeAny(); !ok && !next.HasStatus && ticks <= c.o.KeepAliveTicks {
					continue
				}
			}
		}
		ticks = 0
		next.Body = []byte{}
		if seg.buf != nil {
			next.Body = seg.buf.b[seg.start:seg.end:seg.end]
		}
		next.EOF = ended
		if ended {
			// The backend's trailers are known once its body is read.
			next.Trailers = append(next.Trailers, headers(hresp.Trailer)...)
			next.BackendDurationMs = time.Since(start).Milliseconds()
		}
		n += int64(len(next.Body))
		err := c.post(ctx, next, streams)
		s.done(seg)
		if err != nil || ended {
			// A missing chunk would corrupt the response: stop, and close
			// the backend connection (stop does).
			return n
		}
		next = &wire.Response{HasID: true, ID: first.ID}
	}
}

// take returns the next chunk when one is due without waiting for a
// tick: the body ended, more than MaxChunkSize bytes wait, or with
// EagerChunks any bytes at all. ended says the segment is the body's last
// (it may be empty then).
func (s *streamer) take() (seg segment, ended, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.pending > s.c.o.MaxChunkSize || (s.c.o.EagerChunks && s.pending > 0) {
		return s.takeLocked()
	}
	return segment{}, false, false
}

// takeAny returns whatever waits, at a tick; ok is false when nothing
// does.
func (s *streamer) takeAny() (seg segment, ended, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.pending > 0 {
		return s.takeLocked()
	}
	return segment{}, false, false
}

func (s *streamer) takeLocked() (seg segment, ended, ok bool) {
	if len(s.segs) > 0 {
		seg = s.segs[0]
		s.segs[0] = segment{}
		s.segs = s.segs[1:]
		s.pending -= seg.end - seg.start
		s.space.Signal()
	}
	return seg, s.ended && len(s.segs) == 0, true
}

// done gives back the hold of a posted segment on its buffer.
func (s *streamer) done(seg segment) {
	if seg.buf == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unrefLocked(seg.buf)
}

func (s *streamer) unrefLocked(b *chunkBuf) {
	b.refs--
	if b.refs == 0 {
		s.c.putChunkBuffer(b.b)
	}
}

// stop ends the reader, if it still runs, and frees what was not posted.
func (s *streamer) stop() {
	s.mu.Lock()
	s.stopped = true
	for _, seg := range s.segs {
		s.unrefLocked(seg.buf)
	}
	s.segs, s.pending = nil, 0
	s.space.Broadcast()
	s.mu.Unlock()
}

// read reads the backend's body until it ends, the poster stops, or
// reading fails (which ends the body, as in the original).
func (s *streamer) read(body io.ReadCloser) {
	defer body.Close()
	block := s.c.o.BlockSize
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		for s.pending > s.c.o.MaxChunkSize && !s.stopped {
			s.space.Wait()
		}
		if s.stopped {
			break
		}
		if s.cur == nil || len(s.cur.b)-s.w < block {
			if s.cur != nil {
				s.unrefLocked(s.cur)
			}
			s.cur, s.w = &chunkBuf{b: s.c.chunkBuffer(), refs: 1}, 0
		}
		buf, at := s.cur, s.w
		s.mu.Unlock()
		n, err := body.Read(buf.b[at : at+block])
		s.mu.Lock()
		if s.stopped {
			break
		}
		if n > 0 {
			if k := len(s.segs) - 1; k >= 0 && s.segs[k].buf == buf && s.segs[k].end == at {
				s.segs[k].end += n
			} else {
				buf.refs++
				s.segs = append(s.segs, segment{buf: buf, start: at, end: at + n})
			}
			s.w += n
			s.pending += n
		}
		if err != nil {
			s.ended = true
		}
		select {
		case s.avail <- struct{}{}:
		default:
		}
		if err != nil {
			break
		}
	}
	if s.cur != nil {
		s.unrefLocked(s.cur)
		s.cur = nil
	}
}

// chunkBuffer returns a buffer for a chunk and the block read after it
// crosses MaxChunkSize.
func (c *Client) chunkBuffer() []byte {
	if b, ok := c.chunkBufs.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, c.o.MaxChunkSize+c.o.BlockSize)
}

func (c *Client) putChunkBuffer(b []byte) {
	if len(b) == c.o.MaxChunkSize+c.o.BlockSize {
		c.chunkBufs.Put(&b)
	}
}

// postBody posts a backend body of known length in one message, id
// first, read from the backend as it is sent (see Options.StreamBodies):
// the server relays it to the user as it comes. It returns the bytes
// relayed. A body cut short ends the post in the middle, which the
// server reports to the user as an error.
func (c *Client) postBody(ctx context.Context, first *wire.Response, hresp *http.Response, start time.Time) int64 {
	first.EOF = true
	b := &bodyPost{out: first.AppendStreamHead(nil, int(hresp.ContentLength)), hresp: hresp,
		left: hresp.ContentLength, size: c.o.BlockSize, start: start}
	defer hresp.Body.Close()
	req := c.postTmpl.WithContext(ctx)
	// Chunked, so that net/http writes it with WriteTo: each block in one
	// write, straight from where it was read.
	req.Body, req.ContentLength = b, -1
	resp, err := c.relayDo(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return b.sent
}

// bodyPost is the body of postBody's post: the message's head, the
// backend's body, then the fields after it (trailers, known at the end).
type bodyPost struct {
	out   []byte // to send before reading more: the head, then the tail
	hresp *http.Response
	left  int64 // backend bytes still to send
	ended bool  // the tail is in out
	size  int   // read size of WriteTo
	start time.Time
	sent  int64
}

// tail returns the fields after the body, once it has ended.
func (b *bodyPost) tail() []byte {
	io.Copy(io.Discard, b.hresp.Body) // the trailers come after the body
	b.ended = true
	t := &wire.Response{Trailers: headers(b.hresp.Trailer), BackendDurationMs: time.Since(b.start).Milliseconds()}
	return t.AppendStreamTail(nil)
}

// read reads the backend's body into p.
func (b *bodyPost) read(p []byte) (int, error) {
	k, err := b.hresp.Body.Read(p[:min(int64(len(p)), b.left)])
	b.left -= int64(k)
	b.sent += int64(k)
	if err != nil && b.left > 0 {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return k, err // the post is cut: the user sees an error
	}
	return k, nil
}

func (b *bodyPost) Read(p []byte) (int, error) {
	for {
		switch {
		case len(b.out) > 0:
			n := copy(p, b.out)
			b.out = b.out[n:]
			return n, nil
		case b.left > 0:
			return b.read(p)
		case !b.ended:
			b.out = b.tail()
		default:
			return 0, io.EOF
		}
	}
}

// WriteTo writes the message with reads of the backend of Options.BlockSize,
// each written at once.
func (b *bodyPost) WriteTo(w io.Writer) (int64, error) {
	bp := postBufs.Get().(*[]byte)
	defer postBufs.Put(bp)
	if len(*bp) < b.size {
		*bp = make([]byte, b.size)
	}
	buf := (*bp)[:b.size]
	var total int64
	for {
		var p []byte
		var rerr error
		switch {
		case len(b.out) > 0:
			p, b.out = b.out, nil
		case b.left > 0:
			var k int
			k, rerr = b.read(buf)
			p = buf[:k]
		case !b.ended:
			b.out = b.tail()
			continue
		default:
			return total, nil
		}
		n, err := w.Write(p)
		total += int64(n)
		if err != nil {
			return total, err
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

func (b *bodyPost) Close() error { return nil }

// postBufs lend postBody its read buffer.
var postBufs = sync.Pool{New: func() any { b := []byte(nil); return &b }}
