package client

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// The agent's side of a native expose connection.
//
// The server opens one yamux stream per HTTP/1.1 connection its transport
// pools for the agent, and sends requests on it one after the other. So
// the agent needs no HTTP server, reverse proxy and connection pool of its
// own: it pins one connection to the local service to each stream (a
// pair) and forwards each request as it comes, rewritten as a reverse
// proxy would, then the answer. A CPU profile of the bench showed the
// agent costing about one httputil.ReverseProxy per request when it ran
// an http.Server with one: every request crossed the server's response
// writer, the proxy's header copies and the transport's read and write
// loops. A pair does the forwarding on the stream's goroutine; beside it
// is, while a request body is being sent, the goroutine sending it.
// BENCHMARKS.md has the figures.

// agentServer serves the streams the server opens on one session.
type agentServer struct {
	target *url.URL
	o      ExposeOptions
	dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
	addr string // target host:port

	ctx    context.Context // ends at the forced close: dials stop
	cancel context.CancelFunc

	mu      sync.Mutex
	pairs   map[*pair]struct{}
	closing bool
	wg      sync.WaitGroup // the pairs' goroutines
}

func newAgentServer(target *url.URL, o ExposeOptions) *agentServer {
	nd := &net.Dialer{Timeout: pairDialTimeout, KeepAlive: 30 * time.Second}
	s := &agentServer{target: target, o: o, dialer: nd, addr: hostPort(target), pairs: map[*pair]struct{}{}}
	if target.Scheme == "https" {
		// HTTP/1.1 only, as the transport without ForceAttemptHTTP2 was.
		s.dialer = &tls.Dialer{NetDialer: nd, Config: &tls.Config{ServerName: target.Hostname(), NextProtos: []string{"http/1.1"}}}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// hostPort is u's host with the scheme's port when it names none.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// serve accepts streams until acceptCtx ends or the session closes; each
// stream is served by its own goroutine, owned by s (see shutdown, close).
func (s *agentServer) serve(acceptCtx context.Context, sess *yamux.Session) {
	for {
		st, err := sess.AcceptStreamWithContext(acceptCtx)
		if err != nil {
			return
		}
		p := &pair{s: s, st: st}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			st.Close()
			continue
		}
		s.pairs[p] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			p.serve()
			s.mu.Lock()
			delete(s.pairs, p)
			s.mu.Unlock()
		}()
	}
}

// shutdown is http.Server.Shutdown's equivalent, called once serve
// returned: idle pairs and upgraded ones (which Shutdown leaves to the
// session's close) close now, busy ones after their answer; when ctx ends
// first the rest are closed. Upgraded pairs close now so that a websocket
// does not hold up the agent's exit, as before.
func (s *agentServer) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	for p := range s.pairs {
		if p.state != pairBusy {
			p.abort()
		}
	}
	s.mu.Unlock()
	drain(ctx, &s.wg, s.cancel, s.close)
}

// drain waits for wg until ctx ends, then calls closeAll and waits on;
// cancel ends the dials once everything finished by itself.
func drain(ctx context.Context, wg *sync.WaitGroup, cancel, closeAll func()) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		cancel()
	case <-ctx.Done():
		closeAll()
		<-done
	}
}

// close closes every pair at once and waits for their goroutines.
func (s *agentServer) close() {
	s.cancel()
	s.mu.Lock()
	s.closing = true
	for p := range s.pairs {
		p.abort()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
