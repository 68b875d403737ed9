package expose

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/httpapi"
)

// TLS passthrough: a native agent that asks for proto=tls serves its own
// TLS (its local service holds the certificate). A connection to the
// node's listener whose TLS ClientHello names NAME.<domain>, for a NAME
// such agents hold, goes to one of them whole, ClientHello included, as a
// raw connection; every other connection goes on to the HTTP server with
// the bytes read to find that out given back first.

// protoTLS is AgentProtoParam's value for TLS passthrough by server name.
const protoTLS = "tls"

// sniNames are the names of passthrough agents, and their users'
// connections.
type sniNames struct {
	rawCarrier // its mu guards byName
	domain     string
	byName     map[string]*rawSet
	held       atomic.Int32 // len(byName): the listener peeks only when some
}

func newSNINames(o Options, log *slog.Logger, m *metrics) *sniNames {
	if o.Domain == "" {
		return nil
	}
	return &sniNames{
		rawCarrier: rawCarrier{maxConns: o.TCPMaxConnections, log: log, count: m.raw(transportTLS)},
		domain:     o.Domain, byName: map[string]*rawSet{},
	}
}

// sniBinding binds a passthrough agent to its name.
type sniBinding struct {
	sn     *sniNames
	name   string
	public string
}

// tlsBinding returns the binding of an agent asking for TLS passthrough:
// it needs an expose domain and, under a token policy, serve on
// /tls/NAME.
func (s *Service) tlsBinding(r *http.Request, name string) (binding, *httpapi.Error) {
	if s.sni == nil {
		return nil, httpapi.Errorf(http.StatusBadRequest, "this server passes no TLS through: it runs without --expose-domain")
	}
	if s.policy.Enabled() && !s.policy.Allow(r, auth.Serve, "/tls/"+name) {
		return nil, httpapi.Errorf(http.StatusForbidden, "not granted serve on /tls/%s (TLS passthrough is open to whoever reaches the server)", name)
	}
	u := s.publicURL(r, name)
	scheme, hostport, _ := strings.Cut(u, "://")
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		hostport += map[string]string{"http": ":80", "https": ":443"}[scheme]
	}
	return &sniBinding{sn: s.sni, name: name, public: "tls://" + hostport}, nil
}

func (b *sniBinding) attach(a *nativeAgent) (string, *httpapi.Error) {
	sn := b.sn
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if sn.closed {
		return "", errClosing
	}
	rs := sn.byName[b.name]
	if rs == nil {
		rs = &rawSet{}
		sn.byName[b.name] = rs
		sn.held.Add(1)
	}
	rs.join(a)
	return b.public, nil
}

func (b *sniBinding) detach(a *nativeAgent) {
	sn := b.sn
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if rs := sn.byName[b.name]; rs != nil && !rs.leave(a) {
		delete(sn.byName, b.name)
		sn.held.Add(-1)
	}
}

// route returns the agents of the name serverName (a ClientHello's SNI)
// is, nil when none.
func (sn *sniNames) route(serverName string) *rawSet {
	name, ok := strings.CutSuffix(strings.TrimSuffix(strings.ToLower(serverName), "."), "."+sn.domain)
	if !ok || name == "" {
		return nil
	}
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.byName[name]
}

// Listener returns ln with the connections of TLS passthrough agents
// taken out: what its Accept returns is every other connection, for the
// node's HTTP server. Without an expose domain it is ln itself. While no
// passthrough agent is connected, connections go through unread;
// otherwise each one's first bytes are read (for at most peekTimeout) to
// find its ClientHello's server name. Close closes ln and waits for the
// connections being read.
func (s *Service) Listener(ln net.Listener, peekTimeout time.Duration) net.Listener {
	if s.sni == nil {
		return ln
	}
	if peekTimeout <= 0 {
		peekTimeout = defaultPeekTimeout
	}
	l := &sniListener{
		Listener: ln, sn: s.sni, timeout: peekTimeout,
		conns: make(chan net.Conn), errs: make(chan error), done: make(chan struct{}),
		peeking: map[net.Conn]struct{}{},
	}
	l.wg.Add(1)
	go l.run()
	return l
}

// defaultPeekTimeout is Listener's peek timeout when it is given none.
const defaultPeekTimeout = 10 * time.Second

type sniListener struct {
	net.Listener
	sn      *sniNames
	timeout time.Duration
	conns   chan net.Conn // to Accept
	errs    chan error    // to Accept
	done    chan struct{} // closed by Close

	closeOnce sync.Once
	closeErr  error
	mu        sync.Mutex
	peeking   map[net.Conn]struct{}
	wg        sync.WaitGroup // run and the peeks
}

// run accepts connections until the listener closes.
func (l *sniListener) run() {
	defer l.wg.Done()
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.errs <- err:
			case <-l.done:
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if l.sn.held.Load() == 0 {
			l.deliver(c)
			continue
		}
		l.mu.Lock()
		select {
		case <-l.done:
			l.mu.Unlock()
			c.Close()
			continue
		default:
		}
		l.peeking[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.peek(c)
	}
}

// deliver hands c to Accept.
func (l *sniListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

// peek reads c's ClientHello, if it starts with one, and hands c to its
// passthrough agents or, replaying what was read, to Accept.
func (l *sniListener) peek(c net.Conn) {
	defer l.wg.Done()
	c.SetReadDeadline(time.Now().Add(l.timeout))
	name, read, err := peekHello(c)
	c.SetReadDeadline(time.Time{})
	l.mu.Lock()
	delete(l.peeking, c)
	l.mu.Unlock()
	rc := &replayConn{Conn: c, buf: read}
	if name != "" {
		if rs := l.sn.route(name); rs != nil {
			l.sn.take(rs, rc)
			return
		}
	}
	if len(read) == 0 && err != nil {
		c.Close() // nothing came: nothing to answer
		return
	}
	l.deliver(rc)
}

func (l *sniListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *sniListener) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		close(l.done)
		for c := range l.peeking {
			c.SetReadDeadline(time.Now())
		}
		l.mu.Unlock()
		l.closeErr = l.Listener.Close()
		l.wg.Wait()
	})
	return l.closeErr
}

// peekHello reads from r what a TLS ClientHello needs to be parsed, and
// returns its server name ("" when r does not start with a handshake
// record, or the hello names none) and every byte it read, to be given
// back. A connection that does not start with a TLS handshake record
// costs one byte read. The parsing is crypto/tls's own: a server
// handshake over a connection that records what it reads and discards
// what it writes, stopped once the hello is read.
func peekHello(r io.Reader) (name string, read []byte, err error) {
	var first [1]byte
	if _, err := io.ReadFull(r, first[:]); err != nil {
		return "", nil, err
	}
	if first[0] != 0x16 { // not a TLS handshake record
		return "", first[:], nil
	}
	rec := &recorder{r: io.MultiReader(bytes.NewReader(first[:]), r)}
	srv := tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name = h.ServerName
		return nil, errHelloRead
	}})
	err = srv.Handshake()
	if errors.Is(err, errHelloRead) {
		err = nil
	}
	return name, rec.buf, err
}

var errHelloRead = errors.New("hello read")

// recorder is the connection peekHello's handshake runs on: it reads from
// r, keeping a copy, and discards writes (the handshake's alert).
type recorder struct {
	r   io.Reader
	buf []byte
}

func (c *recorder) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.buf = append(c.buf, p[:n]...)
	return n, err
}

func (c *recorder) Write(p []byte) (int, error)      { return len(p), nil }
func (c *recorder) Close() error                     { return nil }
func (c *recorder) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *recorder) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *recorder) SetDeadline(time.Time) error      { return nil }
func (c *recorder) SetReadDeadline(time.Time) error  { return nil }
func (c *recorder) SetWriteDeadline(time.Time) error { return nil }

// replayConn is a connection whose first bytes were read already: it
// gives them back first. It reaches the connection underneath for what
// the node's listener and the front doors use (NetConn, CloseWrite,
// SetLinger, SyscallConn: the first bytes are read by the HTTP server
// before anything uses the socket directly).
type replayConn struct {
	net.Conn
	buf []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *replayConn) NetConn() net.Conn { return c.Conn }

func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *replayConn) SetLinger(sec int) error {
	if sl, ok := c.Conn.(interface{ SetLinger(int) error }); ok {
		return sl.SetLinger(sec)
	}
	return nil
}

func (c *replayConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, syscall.EINVAL
}
