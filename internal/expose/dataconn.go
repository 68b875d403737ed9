package expose

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/internal/connpeek"
	"github.com/postern/postern/internal/httpapi"
)

// Data connections: a native HTTP agent's connections to the server that
// carry HTTP/1.1 without websocket framing and yamux.
//
// A request on a yamux stream crosses four goroutines more than one on
// a plain connection (the writer hands its bytes to yamux's send loop,
// which hands them to the websocket writer, and on the way back the
// receive loop hands them to the reader), and a message more per
// request: measured, that was the gap of the native agent to a plain
// reverse proxy, with CPU per request nearly the same. So an agent whose
// handshake answer offers it (DataSecretHeader) keeps a few spare
// connections open to DataConnPath: an HTTP/1.1 upgrade to
// DataUpgrade, authorized by the session's secret alone, after which the
// connection is a plain byte stream. The server takes a spare as a new
// connection to the agent wherever it would open a stream (the direct
// path and the http.Transport), and sends requests on it one after the
// other, kept alive between them like any connection; the agent serves
// it exactly as it serves a stream (a pair with its local connection).
// The agent replaces each spare taken into use, up to the server's cap
// (DataMaxHeader). With no spare the server opens a stream as before,
// so an agent that does not know of data connections, or cannot dial
// them (a proxy in between, a node other than the session's), works as
// it did. Data connections belong to their session: when it ends they
// are closed.

// Wire of data connections.
const (
	// DataConnPath is where an agent dials its data connections.
	DataConnPath = "/agent/data"
	// DataSecretHeader, on the answer to a native HTTP agent's handshake,
	// offers data connections: the secret that authorizes them, which
	// the agent sends back in the same header on each.
	DataSecretHeader = "X-Postern-Data-Secret"
	// DataMaxHeader, beside DataSecretHeader, is how many data
	// connections the agent may hold at once.
	DataMaxHeader = "X-Postern-Data-Max"
	// DataUpgrade is the protocol a data connection upgrades to.
	DataUpgrade = "postern-data"
)

// dataAnswerTimeout bounds the write of the upgrade's answer (a few
// bytes on a new connection: it does not wait unless the agent is gone).
const dataAnswerTimeout = 10 * time.Second

// dataReg is the data connections of one agent session.
type dataReg struct {
	id  string // the secret's public half: the key of nativeTransport.data
	key []byte // its private half
	max int
	m   *metrics

	mu     sync.Mutex
	spares []*dataConn
	all    map[*dataConn]struct{}
	closed bool
}

// newDataReg makes the data connections' registration of a session,
// allowing max at once.
func newDataReg(max int, m *metrics) *dataReg {
	var b [24]byte
	rand.Read(b[:])
	enc := base64.RawURLEncoding
	return &dataReg{id: enc.EncodeToString(b[:8]), key: []byte(enc.EncodeToString(b[8:])), max: max, m: m, all: map[*dataConn]struct{}{}}
}

// secret is what the agent sends on each data connection.
func (d *dataReg) secret() string { return d.id + "." + string(d.key) }

// dataConn is a data connection of an agent.
type dataConn struct {
	net.Conn
	reg  *dataReg
	once sync.Once
}

func (c *dataConn) Close() error {
	c.once.Do(func() {
		c.reg.mu.Lock()
		_, held := c.reg.all[c]
		delete(c.reg.all, c)
		c.reg.mu.Unlock()
		if held {
			c.reg.m.dataOpen.Dec()
		}
	})
	return c.Conn.Close()
}

// add answers the upgrade on c and takes it in as a spare; false when
// the session ended or holds its maximum, or the answer failed (c is
// then not kept). The answer is written with the spare in place and
// before anyone can take it: an agent that read it knows its connection
// may carry a request at once, and no request goes before the answer.
func (d *dataReg) add(c *dataConn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || len(d.all) >= d.max {
		return false
	}
	c.SetWriteDeadline(time.Now().Add(dataAnswerTimeout))
	_, err := c.Write(upgraded)
	c.SetWriteDeadline(time.Time{})
	if err != nil {
		return false
	}
	d.all[c] = struct{}{}
	d.spares = append(d.spares, c)
	d.m.data.WithLabelValues("accepted").Inc()
	d.m.dataOpen.Inc()
	return true
}

// full reports whether the session holds its maximum of data connections.
func (d *dataReg) full() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.all) >= d.max
}

// take returns a spare to use, or nil; spares the agent closed are
// dropped on the way.
func (d *dataReg) take() net.Conn {
	if d == nil {
		return nil
	}
	for {
		d.mu.Lock()
		n := len(d.spares)
		if n == 0 {
			d.mu.Unlock()
			return nil
		}
		c := d.spares[n-1]
		d.spares[n-1] = nil
		d.spares = d.spares[:n-1]
		d.mu.Unlock()
		if !connpeek.IdleClosed(c.Conn) {
			d.m.data.WithLabelValues("taken").Inc()
			return c
		}
		c.Close()
	}
}

// hasSpare reports, without locking, whether a spare may be there.
func (d *dataReg) hasSpare() bool {
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.spares) > 0
}

// close closes every data connection of the session, in use or spare,
// and takes no more.
func (d *dataReg) close() {
	if d == nil {
		return
	}
	d.mu.Lock()
	d.closed = true
	all := make([]*dataConn, 0, len(d.all))
	for c := range d.all {
		all = append(all, c)
	}
	d.spares = nil
	d.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
}

// register makes d's secret known to the data endpoint.
func (t *nativeTransport) register(d *dataReg) {
	t.dataMu.Lock()
	defer t.dataMu.Unlock()
	if t.data == nil {
		t.data = map[string]*dataReg{}
	}
	t.data[d.id] = d
}

// unregister forgets d's secret and closes its connections.
func (t *nativeTransport) unregister(d *dataReg) {
	if d == nil {
		return
	}
	t.dataMu.Lock()
	delete(t.data, d.id)
	t.dataMu.Unlock()
	d.close()
}

// lookup returns the session whose secret is s, or nil.
func (t *nativeTransport) lookup(s string) *dataReg {
	id, key, ok := strings.Cut(s, ".")
	if !ok {
		return nil
	}
	t.dataMu.Lock()
	d := t.data[id]
	t.dataMu.Unlock()
	if d == nil || subtle.ConstantTimeCompare(d.key, []byte(key)) != 1 {
		return nil
	}
	return d
}

var (
	errDataUpgrade = httpapi.Errorf(http.StatusBadRequest, "a data connection is a GET with Connection: Upgrade and Upgrade: %s", DataUpgrade)
	errDataSecret  = httpapi.Errorf(http.StatusForbidden, "data connection: unknown secret (its agent session ended: the agent reconnects and gets a new one)")
	errDataFull    = httpapi.Errorf(http.StatusTooManyRequests, "data connection: the agent holds as many as the server allows")
)

// serveData takes a data connection in for the session its secret names.
func (s *Service) serveData(w http.ResponseWriter, r *http.Request) {
	httpapi.SetRoute(r, "expose.data")
	if s.closing.Load() {
		refuseAgent(w, r, errClosing)
		return
	}
	if r.Method != http.MethodGet || !httpapi.HasToken(r.Header["Connection"], "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), DataUpgrade) {
		refuseAgent(w, r, errDataUpgrade)
		return
	}
	d := s.native.lookup(r.Header.Get(DataSecretHeader))
	if d == nil {
		s.m.data.WithLabelValues("refused").Inc()
		refuseAgent(w, r, errDataSecret)
		return
	}
	if d.full() {
		s.m.data.WithLabelValues("refused").Inc()
		refuseAgent(w, r, errDataFull)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		refuseAgent(w, r, httpapi.Errorf(http.StatusInternalServerError, "data connection: %v", err))
		return
	}
	if brw.Reader.Buffered() > 0 || !d.add(&dataConn{Conn: conn, reg: d}) {
		conn.Close() // the agent sends nothing before a request comes
	}
}

// upgraded is the answer that turns a connection into a data connection.
var upgraded = []byte("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + DataUpgrade + "\r\n\r\n")

// dataHeaders offers data connections on a handshake answer.
func dataHeaders(h http.Header, d *dataReg) {
	h.Set(DataSecretHeader, d.secret())
	h.Set(DataMaxHeader, strconv.Itoa(d.max))
}
