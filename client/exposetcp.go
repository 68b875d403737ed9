package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/postern/postern/internal/expose/muxconn"
)

// The agent's side of raw TCP (ExposeOptions.Local "tcp://HOST:PORT", or
// "tls://HOST:PORT" for a TLS service passed through by server name): the
// server opens one stream per user connection to the agent's public port
// (or to its name, for tls://),
// and the agent splices each to a new connection to the local service,
// half-closes and resets passed on (muxconn.Splice).

// ErrNoRawTCP is returned by Expose for a tcp:// or tls:// Local when the
// server answered as to an HTTP agent: it predates raw agents.
var ErrNoRawTCP = errors.New("the server does not expose raw TCP or TLS (it predates postern's tcp:// and tls:// agents): upgrade it")

// isRaw reports whether target is a raw service: tcp:// (a public port)
// or tls:// (TLS passed through by server name).
func isRaw(target *url.URL) bool { return target.Scheme == "tcp" || target.Scheme == "tls" }

// checkRawTarget checks a raw Local and the public port asked for.
func checkRawTarget(target *url.URL, port int) error {
	if target.Scheme != "tcp" && port != 0 {
		return fmt.Errorf("expose: a public port (%d) is for tcp:// services only", port)
	}
	if !isRaw(target) {
		return nil
	}
	if target.Port() == "" || (target.Path != "" && target.Path != "/") || target.RawQuery != "" {
		return fmt.Errorf("local URL %q: want %s://host:port", target.String(), target.Scheme)
	}
	if port < 0 || port > 65535 {
		return fmt.Errorf("expose: public port %d: want 1 to 65535, or 0 for any", port)
	}
	return nil
}

// addRawFields adds a raw TCP agent's handshake fields to q.
func addRawFields(q url.Values, o ExposeOptions, target *url.URL) {
	if !isRaw(target) {
		return
	}
	q.Set("proto", target.Scheme)
	if o.Port != 0 {
		q.Set("port", strconv.Itoa(o.Port))
	}
}

// checkPublicURL checks that the server's answer is the kind of public URL
// the agent asked for.
func checkPublicURL(target *url.URL, public string) error {
	if isRaw(target) && !strings.HasPrefix(public, target.Scheme+"://") {
		return ErrNoRawTCP
	}
	return nil
}

// streamServer serves the streams the server opens on one session.
type streamServer interface {
	serve(acceptCtx context.Context, sess *yamux.Session)
	shutdown(ctx context.Context)
	close()
}

func newStreamServer(target *url.URL, o ExposeOptions) streamServer {
	if isRaw(target) {
		return newTCPAgentServer(target, o)
	}
	return newAgentServer(target, o)
}

// tcpAgentServer splices each stream to a connection to the local TCP
// service.
type tcpAgentServer struct {
	addr   string
	o      ExposeOptions
	dialer net.Dialer

	ctx    context.Context // ends at close: dials stop
	cancel context.CancelFunc

	mu      sync.Mutex
	conns   map[*yamux.Stream]net.Conn // nil value: still dialing
	closing bool
	wg      sync.WaitGroup
}

func newTCPAgentServer(target *url.URL, o ExposeOptions) *tcpAgentServer {
	s := &tcpAgentServer{addr: target.Host, o: o, conns: map[*yamux.Stream]net.Conn{}}
	s.dialer = net.Dialer{Timeout: pairDialTimeout, KeepAlive: 30 * time.Second}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

func (s *tcpAgentServer) serve(acceptCtx context.Context, sess *yamux.Session) {
	for {
		st, err := sess.AcceptStreamWithContext(acceptCtx)
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			st.Close()
			continue
		}
		s.conns[st] = nil
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.carry(st)
			s.mu.Lock()
			delete(s.conns, st)
			s.mu.Unlock()
		}()
	}
}

// carry dials the local service for stream st and splices the two.
func (s *tcpAgentServer) carry(st *yamux.Stream) {
	start := time.Now()
	c, err := s.dialer.DialContext(s.ctx, "tcp", s.addr)
	if err != nil {
		s.o.Logger.Warn("expose: local service unreachable, connection closed", "local", s.addr, "err", err)
		st.Close()
		return
	}
	tc := c.(*net.TCPConn)
	s.mu.Lock()
	if s.closing && s.ctx.Err() != nil {
		s.mu.Unlock()
		muxconn.Reset(tc)
		st.Close()
		return
	}
	s.conns[st] = tc
	s.mu.Unlock()
	var in, out int64
	err = muxconn.Splice(st, tc, func(n int) { out += int64(n) }, func(n int) { in += int64(n) })
	if s.o.Logger.Enabled(context.Background(), slog.LevelInfo) {
		attrs := []slog.Attr{slog.Int64("bytes_in", in), slog.Int64("bytes_out", out), slog.Duration("duration", time.Since(start))}
		if err != nil {
			attrs = append(attrs, slog.String("err", err.Error()))
		}
		s.o.Logger.LogAttrs(context.Background(), slog.LevelInfo, "connection", attrs...)
	}
}

// shutdown waits for the connections in progress until ctx ends, then
// closes the rest; serve has returned.
func (s *tcpAgentServer) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	drain(ctx, &s.wg, s.cancel, s.close)
}

// close resets every connection at once and waits for their goroutines.
func (s *tcpAgentServer) close() {
	s.mu.Lock()
	s.closing = true
	s.cancel()
	for st, c := range s.conns {
		if c != nil {
			muxconn.Reset(c)
		}
		st.SetDeadline(time.Now()) // a read waiting for the server's FIN ends
		st.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
