package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
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
	// Local is the URL of the service to expose ("http://localhost:3000"),
	// or "tcp://HOST:PORT" for a raw TCP service (SSH, a database): the
	// server then gives the agent a public TCP port and OnReady gets
	// "tcp://SERVER:PORT". Raw TCP needs a server run with
	// --expose-tcp-ports.
	Local string
	//
	// "tls://HOST:PORT" is a service that speaks TLS itself (it holds the
	// certificate): TLS connections to the server's listener whose server
	// name is NAME.<expose domain> reach it untouched, and OnReady gets
	// "tls://NAME.<domain>:PORT".
	//
	// Port, for a tcp:// Local, asks for that public port (it must be in
	// the server's range and, under a token policy, granted with serve on
	// /tcp/PORT); zero: any free one.
	Port int
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

	// Access rules the server enforces before a request reaches the
	// agent (a token policy may require or forbid each).
	//
	// BasicAuth, "user:password", makes users give them (HTTP basic
	// auth: 401 with WWW-Authenticate until they do); the server removes
	// them before the request reaches the service.
	BasicAuth string
	// AllowCIDR lists the only address ranges ("10.0.0.0/8",
	// "2001:db8::/32") or addresses users are served from; others get 403.
	AllowCIDR []string
	// ResponseHeaders are set on every answer of the service.
	ResponseHeaders http.Header

	// Inspector, when set, records every exchange with the local service
	// (see Inspector).
	Inspector *Inspector
}

// ErrAccessNotEnforced stops Expose when the server did not confirm that
// it enforces the access rules asked for (a server from before them
// ignores them): the service is not published unguarded.
var ErrAccessNotEnforced = errors.New("the server does not enforce the access rules asked for (it predates them): upgrade the server, or expose without them")

// enforced checks the handshake answer's list of the rules the server
// enforces against those o asks for.
func enforced(o ExposeOptions, answer http.Header) error {
	acc, _ := o.access()
	confirmed := strings.Fields(answer.Get(muxconn.EnforcedHeader))
	for _, r := range acc.Rules() {
		if !slices.Contains(confirmed, r) {
			return fmt.Errorf("%w (%s not confirmed)", ErrAccessNotEnforced, r)
		}
	}
	return nil
}

// access is o's access rules as the handshake carries them.
func (o ExposeOptions) access() (muxconn.Access, error) {
	var a muxconn.Access
	var err error
	if o.BasicAuth != "" {
		if a.User, a.Password, err = muxconn.ParseBasicAuth(o.BasicAuth); err != nil {
			return a, err
		}
	}
	if a.Allow, err = muxconn.ParseCIDRs(o.AllowCIDR); err != nil {
		return a, err
	}
	for k, vs := range o.ResponseHeaders {
		for _, v := range vs {
			name, value, err := muxconn.ParseResponseHeader(k + ": " + v)
			if err != nil {
				return a, err
			}
			if a.Header == nil {
				a.Header = http.Header{}
			}
			a.Header.Add(name, value)
		}
	}
	return a, nil
}

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
	if err != nil || (target.Scheme != "http" && target.Scheme != "https" && !isRaw(target)) || target.Host == "" {
		return fmt.Errorf("local URL %q: want http://host:port, https://host:port, tcp://host:port or tls://host:port", o.Local)
	}
	if err := checkRawTarget(target, o.Port); err != nil {
		return err
	}
	if o.Name == "" {
		return errors.New("expose: the agent needs a name")
	}
	if _, err := o.access(); err != nil {
		return fmt.Errorf("expose: %w", err)
	}
	backoff := o.MinBackoff
	for {
		start := time.Now()
		err := c.exposeOnce(ctx, o, target)
		if ctx.Err() != nil {
			return nil
		}
		var perm *Error
		if errors.Is(err, ErrAccessNotEnforced) {
			return err
		}
		if errors.As(err, &perm) && perm.StatusCode >= 400 && perm.StatusCode < 500 && perm.StatusCode != http.StatusTooManyRequests {
			return err
		}
		if errors.Is(err, ErrNoRawTCP) {
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

// agentURL is the websocket URL of the agent endpoint for o.
func (c *Client) agentURL(o ExposeOptions, target *url.URL) string {
	u := *c.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.Path += "/agent"
	q := url.Values{"name": {o.Name}}
	addRawFields(q, o, target)
	u.RawQuery = q.Encode()
	return u.String()
}

// exposeOnce runs one connection until it drops or ctx ends.
func (c *Client) exposeOnce(ctx context.Context, o ExposeOptions, target *url.URL) error {
	hdr := http.Header{}
	if c.token != "" {
		hdr.Set("Authorization", "Bearer "+c.token)
	}
	if acc, err := o.access(); err == nil {
		acc.Write(hdr)
	}
	dialCtx, cancelDial := context.WithTimeout(ctx, 30*time.Second)
	ws, resp, err := websocket.Dial(dialCtx, c.agentURL(o, target), &websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: hdr})
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
	if err := checkPublicURL(target, public); err != nil {
		ws.CloseNow()
		return err
	}
	if err := enforced(o, resp.Header); err != nil {
		ws.CloseNow()
		return err
	}
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
	srv := newStreamServer(target, o)
	acceptCtx, stopAccept := context.WithCancel(context.Background())
	defer stopAccept()
	served := make(chan struct{})
	go func() { defer close(served); srv.serve(acceptCtx, sess) }()
	o.Logger.Info("expose: ready", "url", public, "local", o.Local, "name", o.Name)
	if o.OnReady != nil {
		o.OnReady(public)
	}
	select {
	case <-sess.CloseChan():
		stopAccept()
		<-served
		srv.close()
		if err := muxconn.Cause(conn); err != nil {
			return fmt.Errorf("connection to the server lost: %w", err)
		}
		return errors.New("connection to the server lost")
	case <-ctx.Done():
	}
	// Stop: no new streams, let requests in progress finish, then go.
	o.Logger.Info("expose: stopping, requests in progress may finish", "within", o.Drain)
	sess.GoAway()
	stopAccept()
	<-served
	drainCtx, cancel := context.WithTimeout(context.Background(), o.Drain)
	defer cancel()
	srv.shutdown(drainCtx)
	sess.Close()
	closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Second)
	defer cancelClose()
	go func() { <-closeCtx.Done(); ws.CloseNow() }()
	ws.Close(websocket.StatusNormalClosure, "agent stopping")
	return nil
}

func oneLineErr(err error) string {
	s := err.Error()
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}
