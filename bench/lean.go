package main

// leanConn is the load's HTTP/1.1 client where the harness must weigh
// about as little as the C client of a baseline (redis/scale against
// redis-benchmark): one keep-alive connection per worker, requests
// written as prebuilt bytes in one write, answers read with bufio and
// parsed only as far as the status, Content-Length and chunked framing.
// It reads answers of postern's own server in the bench only; a framing it
// does not know is an error, and every request runs under a deadline, so
// a bad answer never hangs a worker.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// leanTimeout bounds one exchange of a leanConn: a long poll's wait
// included.
const leanTimeout = 10 * time.Second

type leanConn struct {
	addr    string // host:port
	timeout time.Duration
	ctx     context.Context // the phase: when it ends, a pending exchange fails at once
	c       net.Conn
	br      *bufio.Reader
	stop    func() bool // undoes the context's hook on c
}

// newLeanConn returns a client of addr (host:port) for the phase ctx; it
// dials on first use and again after any error.
func newLeanConn(ctx context.Context, addr string, timeout time.Duration) *leanConn {
	return &leanConn{addr: addr, timeout: timeout, ctx: ctx}
}

// leanRequest builds the bytes of a request to host: a body, when not
// nil, goes with its length.
func leanRequest(method, host, target, contentType string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host)
	if body != nil {
		fmt.Fprintf(&b, "Content-Type: %s\r\nContent-Length: %d\r\n", contentType, len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// do sends req (from leanRequest) and reads the answer, discarding its
// body; it returns the status. After an error the connection is closed.
func (l *leanConn) do(req []byte) (int, error) {
	if err := l.ctx.Err(); err != nil {
		return 0, err
	}
	if l.c == nil {
		c, err := (&net.Dialer{Timeout: l.timeout}).DialContext(l.ctx, "tcp", l.addr)
		if err != nil {
			return 0, err
		}
		l.c, l.br = c, bufio.NewReaderSize(c, 4096)
		// The phase's end cuts a long poll short, as a request's context
		// does for net/http.
		l.stop = context.AfterFunc(l.ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	}
	t0 := time.Now()
	status, keep, err := l.exchange(req)
	if err != nil {
		err = fmt.Errorf("%w (after %v)", err, time.Since(t0).Round(time.Millisecond))
	}
	if err != nil || !keep {
		l.close()
	}
	return status, err
}

func (l *leanConn) exchange(req []byte) (status int, keep bool, err error) {
	if err := l.c.SetDeadline(time.Now().Add(l.timeout)); err != nil {
		return 0, false, err
	}
	if _, err := l.c.Write(req); err != nil {
		return 0, false, err
	}
	return readAnswer(l.br)
}

// close closes the connection, if any; the next do dials again.
func (l *leanConn) close() {
	if l.c == nil {
		return
	}
	l.stop()
	l.c.Close()
	l.c, l.br, l.stop = nil, nil, nil
}

// errFraming is an answer the lean client cannot read.
var errFraming = errors.New("lean client: malformed answer")

// readAnswer reads one HTTP/1.1 answer from br and discards its body. keep
// is false when the server closes the connection after it.
func readAnswer(br *bufio.Reader) (status int, keep bool, err error) {
	line, err := readLine(br)
	if err != nil {
		return 0, false, err
	}
	// "HTTP/1.1 201 Created"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return 0, false, fmt.Errorf("%w: status line %q", errFraming, line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil || status < 100 {
		return 0, false, fmt.Errorf("%w: status line %q", errFraming, line)
	}
	keep = line[7] == '1'
	length, chunked := int64(-1), false
	for {
		line, err := readLine(br)
		if err != nil {
			return 0, false, err
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, false, fmt.Errorf("%w: header %q", errFraming, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 {
				return 0, false, fmt.Errorf("%w: Content-Length %q", errFraming, value)
			}
			length = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			if !bytes.EqualFold(value, []byte("chunked")) {
				return 0, false, fmt.Errorf("%w: Transfer-Encoding %q", errFraming, value)
			}
			chunked = true
		case bytes.EqualFold(name, []byte("Connection")):
			if bytes.EqualFold(value, []byte("close")) {
				keep = false
			}
		}
	}
	switch {
	case status < 200:
		return 0, false, fmt.Errorf("%w: interim answer %d", errFraming, status)
	case status == 204 || status == 304:
		return status, keep, nil
	case chunked:
		return status, keep, discardChunked(br)
	case length >= 0:
		_, err := br.Discard(int(length))
		return status, keep, err
	default:
		return 0, false, fmt.Errorf("%w: %d without a length", errFraming, status)
	}
}

// discardChunked reads a chunked body and its trailers.
func discardChunked(br *bufio.Reader) error {
	for {
		line, err := readLine(br)
		if err != nil {
			return err
		}
		size, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("%w: chunk size %q", errFraming, line)
		}
		if n == 0 {
			for { // trailers
				line, err := readLine(br)
				if err != nil {
					return err
				}
				if len(line) == 0 {
					return nil
				}
			}
		}
		if _, err := br.Discard(int(n)); err != nil {
			return err
		}
		if line, err := readLine(br); err != nil {
			return err
		} else if len(line) != 0 {
			return fmt.Errorf("%w: chunk not followed by CRLF", errFraming)
		}
	}
}

// readLine reads a line ending in CRLF, without it; the line is valid
// until the next read from br. A line longer than br's buffer is an error.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			err = fmt.Errorf("%w: line too long", errFraming)
		}
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("%w: line %q not ended by CRLF", errFraming, line)
	}
	return line[:len(line)-2], nil
}
