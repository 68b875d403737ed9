package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/postern/postern/internal/expose/muxconn"
)

// Defaults of ExposeOptions.
const (
	DefaultExposeMinBackoff = 500 * time.Millisecond
	DefaultExposeMaxBackoff = 30 * time.Second
	// DefaultExposeKeepAlive and DefaultExposeWindow match the server's
	// defaults.
	DefaultExposeKeepAlive = 15 * time.Second
	DefaultExposeWindow    = 4 << 20
	// DefaultExposeDrain bounds how long requests in progress may finish
	// when the agent stops.
	DefaultExposeDrain = 5 * time.Second
)

// ExposeOptions configures Expose.
type ExposeOptions struct {
	// Name is the agent's name: users reach it at NAME.<expose domain>.
	Name string
	// Local is the URL of the service to expose ("http://localhost:3000").
	Local string
	// RewriteHost sends the local service its own host in the Host header
	// instead of the public one users asked for.
	RewriteHost bool
	// OnReady is called with the public URL each time the agent is
	// connected and serving (again after every reconnection).
	OnReady func(publicURL string)
	// Logger gets one line per request and the connection's ups and downs;
	// nil: slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between reconnections; the
	// wait doubles from the first to the second, with full jitter.
	MinBackoff, MaxBackoff time.Duration
	// KeepAlive and Window tune the yamux session.
	KeepAlive time.Duration
	Window    int
	// Drain bounds how long requests in progress may finish at stop.
	Drain time.Duration
}

// exposeFlushInterval bounds how long the agent holds back a response of
// known length that arrives slowly from the local service.
const exposeFlushInterval = 10 * time.Millisecond

// PublicURLHeader is the handshake answer's header naming the public URL.
const PublicURLHeader = "X-Postern-Public-Url"

// Expose connects an agent for the local service o.Local under o.Name and
// serves users' requests until ctx ends, reconnecting with backoff and
// jitter whenever the connection drops. It returns nil once ctx ended and
// the requests in progress finished (within o.Drain), or an *Error when the
// server refuses the agent for good (a bad name, a missing or insufficient
// token).
func (c *Client) Expose(ctx context.Context, o ExposeOptions) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultExposeMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(DefaultExposeMaxBackoff, o.MinBackoff)
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultExposeKeepAlive
	}
	if o.Window <= 0 {
		o.Window = DefaultExposeWindow
	}
	if o.Drain <= 0 {
		o.Drain = DefaultExposeDrain
	}
	target, err := url.Parse(o.Local)
	if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
		return fmt.Errorf("local URL %q: want http://host:port or https://host:port", o.Local)
	}
	if o.Name == "" {
		return errors.New("expose: the agent needs a name")
	}
	handler := exposeHandler(target, o)
	backoff := o.MinBackoff
	for {
		start := time.Now()
		err := c.exposeOnce(ctx, o, handler)
		if ctx.Err() != nil {
			return nil
		}
		var perm *Error
		if errors.As(err, &perm) && perm.StatusCode >= 400 && perm.StatusCode < 500 && perm.StatusCode != http.StatusTooManyRequests {
			return err
		}
		if time.Since(start) > 4*o.MaxBackoff {
			backoff = o.MinBackoff // it served a good while: start over
		}
		wait := time.Duration(rand.Int64N(int64(backoff)) + 1)
		o.Logger.Warn("expose: disconnected, reconnecting", "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(2*backoff, o.MaxBackoff)
	}
}

// agentURL is the websocket URL of the agent endpoint for name.
func (c *Client) agentURL(name string) string {
	u := *c.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.Path += "/agent"
	u.RawQuery = url.Values{"name": {name}}.Encode()
	return u.String()
}

// exposeOnce runs one connection until it drops or ctx ends.
func (c *Client) exposeOnce(ctx context.Context, o ExposeOptions, handler http.Handler) error {
	hdr := http.Header{}
	if c.token != "" {
		hdr.Set("Authorization", "Bearer "+c.token)
	}
	dialCtx, cancelDial := context.WithTimeout(ctx, 30*time.Second)
	ws, resp, err := websocket.Dial(dialCtx, c.agentURL(o.Name), &websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: hdr})
	cancelDial()
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			var body []byte
			if resp.Body != nil {
				body, _ = io.ReadAll(io.LimitReader(resp.Body, 1024))
			}
			return unexpected(resp, body)
		}
		return err
	}
	public := resp.Header.Get(PublicURLHeader)
	ws.SetReadLimit(muxconn.ReadLimit())
	connCtx, cancelConn := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelConn()
	conn := muxconn.Conn(connCtx, ws)
	cfg := muxconn.Config(o.KeepAlive, o.Window)
	// The server opens the streams; the agent is yamux's server.
	sess, err := yamux.Server(conn, cfg)
	if err != nil {
		ws.CloseNow()
		return err
	}
	defer sess.Close()
	ln := newStreamListener(sess)
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	o.Logger.Info("expose: ready", "url", public, "local", o.Local, "name", o.Name)
	if o.OnReady != nil {
		o.OnReady(public)
	}
	select {
	case <-sess.CloseChan():
		srv.Close()
		<-served
		if err := muxconn.Cause(conn); err != nil {
			return fmt.Errorf("connection to the server lost: %w", err)
		}
		return errors.New("connection to the server lost")
	case <-ctx.Done():
	}
	// Stop: no new streams, let requests in progress finish, then go.
	sess.GoAway()
	drainCtx, cancel := context.WithTimeout(context.Background(), o.Drain)
	defer cancel()
	if err := srv.Shutdown(drainCtx); err != nil {
		srv.Close()
	}
	<-served
	sess.Close()
	closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Second)
	defer cancelClose()
	go func() { <-closeCtx.Done(); ws.CloseNow() }()
	ws.Close(websocket.StatusNormalClosure, "agent stopping")
	return nil
}

// streamListener is the yamux session as a net.Listener whose Close stops
// accepting without closing the session, so that http.Server.Shutdown can
// drain the streams in progress.
type streamListener struct {
	sess   *yamux.Session
	ctx    context.Context
	cancel context.CancelFunc
}

func newStreamListener(sess *yamux.Session) *streamListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &streamListener{sess: sess, ctx: ctx, cancel: cancel}
}

func (l *streamListener) Accept() (net.Conn, error) {
	s, err := l.sess.AcceptStreamWithContext(l.ctx)
	if err != nil {
		if l.ctx.Err() != nil {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	return s, nil
}

func (l *streamListener) Close() error   { l.cancel(); return nil }
func (l *streamListener) Addr() net.Addr { return l.sess.Addr() }

// exposeHandler is the agent's side: a reverse proxy to the local service
// that logs one line per request.
func exposeHandler(target *url.URL, o ExposeOptions) http.Handler {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			if !o.RewriteHost {
				pr.Out.Host = pr.In.Host
			}
			// The server already set these for the user; Rewrite dropped them.
			for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = v
				}
			}
		},
		Transport: tr,
		// Streams (unknown length, event streams) are flushed at every
		// write whatever this says; a response of known length leaves in
		// one go when it is there at once, and at most this late when it
		// trickles. (Negative would flush every write, and start a timer
		// for every response to flush its headers alone.)
		FlushInterval: exposeFlushInterval,
		BufferPool:    exposeBuffers{},
		ErrorLog:      slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "postern expose: the local service at %s cannot be reached: %s", target.Host, oneLineErr(err))
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The reverse proxy's transport may still be reading the request
		// body (if only to see its end) when the local service's answer
		// starts. Without full duplex the HTTP/1 server would then consume
		// and close the rest of the body, and the transport, finding it
		// closed, would drop the connection to the local service in the
		// middle of the answer. (The server side relays in full duplex
		// too; the reverse proxy closes the body when it returns.)
		_ = http.NewResponseController(w).EnableFullDuplex()
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		rp.ServeHTTP(sw, r)
		if ctx := r.Context(); o.Logger.Enabled(ctx, slog.LevelInfo) {
			o.Logger.LogAttrs(ctx, slog.LevelInfo, "request", slog.String("method", r.Method), slog.String("host", r.Host),
				slog.String("path", r.URL.Path), slog.Int("status", sw.status), slog.Int64("bytes", sw.bytes),
				slog.Duration("elapsed", time.Since(start).Round(time.Microsecond)), slog.String("client", r.Header.Get("X-Forwarded-For")))
		}
	})
}

func oneLineErr(err error) string {
	s := err.Error()
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}

// statusWriter records the status and size of a response; Unwrap lets
// the reverse proxy flush and hijack through it.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack is how the reverse proxy takes over an upgraded connection.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, b, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.status, w.wrote = http.StatusSwitchingProtocols, true
	}
	return c, b, err
}

type exposeBuffers struct{}

var exposeBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (exposeBuffers) Get() []byte  { return *(exposeBufPool.Get().(*[]byte)) }
func (exposeBuffers) Put(b []byte) { exposeBufPool.Put(&b) }
