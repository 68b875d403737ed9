package server

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// tooManyConnections is the whole answer to a connection over the cap.
const tooManyConnections = "HTTP/1.1 503 Service Unavailable\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 20\r\n\r\n" +
	"too many connections"

// limitListener caps the connections open at once. One beyond the cap is
// not left waiting in the backlog (a client could not tell a full server
// from a dead one): it is answered 503 in plain HTTP, when the listener
// serves plain HTTP, and closed.
type limitListener struct {
	net.Listener
	max   int64
	open  atomic.Int64
	plain bool
}

func newLimitListener(ln net.Listener, max int, plain bool) *limitListener {
	return &limitListener{Listener: ln, max: int64(max), plain: plain}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &limitConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		refuse(c, l.plain)
	}
}

// refuse answers and closes a connection over the cap without reading its
// request. The answer fits in a fresh socket's send buffer; the deadline
// only guards the accept loop against the unexpected.
func refuse(c net.Conn, plain bool) {
	if plain {
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		c.Write([]byte(tooManyConnections))
	}
	c.Close()
}

type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
