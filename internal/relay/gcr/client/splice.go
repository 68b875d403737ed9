package client

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/postern/postern/internal/relay/gcr/wire"
	"github.com/postern/postern/internal/relay/splice"
)

// A large backend body of known length, read from a directBackend
// connection, goes to a plain-HTTP relay server on a connection of its
// own, written here rather than by net/http: the message's head in a
// chunk, the body in one chunk copied from the backend's connection to
// the server's by the kernel (relay/splice: the bytes never enter the
// relay client), then the fields after
// it. net/http's client copies a request body through its own buffers
// whatever the body is, so it cannot carry one so.
//
// The post declares its length and "Connection: close": the whole
// message is known before it is sent (the fields after the body are the
// backend's duration up to its headers; a body of known length has no
// trailers), and the connection is the post's alone. A server that
// relays bodies as they come can then take the connection over and
// splice the body on to the user's without it entering the server
// either; any other reads it as an ordinary post.

// spliceMinBytes is the smallest body posted so.
const spliceMinBytes = 1 << 20

// relayAddr returns the relay server's host:port when posts can go on a
// connection of the client's own: plain HTTP, no proxy, and the client's
// own transport (not Options.Relay).
func (c *Client) relayAddr() (string, bool) {
	u := c.postTmpl.URL
	if c.o.Relay != nil || u.Scheme != "http" {
		return "", false
	}
	if p, err := http.ProxyFromEnvironment(c.postTmpl); err != nil || p != nil {
		return "", false
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return net.JoinHostPort(u.Hostname(), port), true
}

// postSpliced posts first and hresp's body (of known length, on a
// directBackend connection) as postBody does, the body spliced from the
// backend's connection to the server's. ok is false when it could not
// start (the body is untouched then: postBody takes over).
func (c *Client) postSpliced(ctx context.Context, first *wire.Response, hresp *http.Response, start time.Time) (sent int64, ok bool) {
	db, isDirect := hresp.Body.(*directBody)
	addr, plain := c.relayAddr()
	if !isDirect || !plain || hresp.ContentLength < spliceMinBytes || hresp.ContentLength >= maxMessageBody {
		return 0, false
	}
	src, srcTCP := db.bc.nc.(*net.TCPConn)
	// What the backend's reader holds already goes first; the rest comes
	// from its connection. More than the body is not a connection to
	// splice from: postBody reads the body as usual.
	held := int64(db.bc.br.Buffered())
	if !srcTCP || held > hresp.ContentLength {
		return 0, false
	}
	d := net.Dialer{Control: splice.DialControl}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, false
	}
	dst, dstTCP := nc.(*net.TCPConn)
	if !dstTCP {
		nc.Close()
		return 0, false
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	// The server's answer is read as soon as it comes: one that comes
	// before the body is all sent (the user went away, the post was
	// refused) stops the copy, which may be waiting for a silent backend.
	var mu sync.Mutex
	copying, cut := true, false
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		resp, err := http.ReadResponse(bufio.NewReaderSize(nc, 4<<10), nil)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		mu.Lock()
		if copying {
			cut = true
			src.SetReadDeadline(time.Unix(1, 0))
		}
		mu.Unlock()
	}()
	defer func() {
		stop()
		nc.Close()
		<-answered
		hresp.Body.Close() // gives the backend connection back once the body was all read
	}()
	n := hresp.ContentLength
	first.EOF = true
	head := first.AppendStreamHead(nil, int(n))
	tail := (&wire.Response{BackendDurationMs: time.Since(start).Milliseconds()}).AppendStreamTail(nil)
	bw := bufio.NewWriterSize(nc, 8<<10)
	tmpl := c.postTmpl
	bw.WriteString("POST " + tmpl.URL.RequestURI() + " HTTP/1.1\r\nHost: " + tmpl.Host + "\r\n")
	tmpl.Header.Write(bw)
	bw.WriteString("Content-Length: " + strconv.FormatInt(int64(len(head))+n+int64(len(tail)), 10) + "\r\nConnection: close\r\n\r\n")
	bw.Write(head)
	if _, err := io.CopyN(bw, db.bc.br, held); err != nil {
		return 0, true
	}
	if err := bw.Flush(); err != nil {
		return 0, true
	}
	k, err := splice.Copy(dst, src, n-held)
	sent = held + k
	mu.Lock()
	copying = false
	early := cut
	mu.Unlock()
	if err != nil || sent < n || early {
		// Cut: the server sees the post end in the middle and tells the
		// user; the backend connection is closed (the body was not read
		// whole).
		return sent, true
	}
	db.left = 0 // read whole: the connection goes back to the pool
	bw.Write(tail)
	if err := bw.Flush(); err != nil {
		return sent, true
	}
	<-answered
	return sent, true
}
