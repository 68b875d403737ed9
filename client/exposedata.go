package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// The agent's data connections: plain connections to the server that
// carry HTTP/1.1 requests without websocket framing and yamux (the
// server's internal/expose explains why). A server that offers them
// names a secret in its handshake answer; the agent then keeps a few
// spare ones dialed (ExposeOptions.DataSpares), each served by a pair as
// a stream is, and dials another whenever one is taken into use or
// ends, up to the server's cap and its own (ExposeOptions.DataConns).
// They end with the session. When they cannot be had (a proxy in the
// way, the server refusing them), requests keep going on the session.

// Wire of data connections (the server's expose.DataConnPath and
// headers).
const (
	dataConnPath     = "/agent/data"
	dataSecretHeader = "X-Postern-Data-Secret"
	dataMaxHeader    = "X-Postern-Data-Max"
	dataUpgrade      = "postern-data"
)

// Defaults of ExposeOptions' data connections.
const (
	// DefaultExposeDataSpares is how many data connections the agent
	// keeps dialed ahead of use: as many users' connections as arrive
	// at once find one without waiting.
	DefaultExposeDataSpares = 4
	// DefaultExposeDataConns caps the data connections the agent holds,
	// spare or in use (the server may cap them lower).
	DefaultExposeDataConns = 64
	// dataDialTimeout bounds a data connection's dial and upgrade.
	dataDialTimeout = 10 * time.Second
)

// dataPool keeps an agent session's data connections.
type dataPool struct {
	c      *Client
	srv    *agentServer
	secret string
	spares int // wanted spare
	max    int
	log    *slog.Logger

	mu           sync.Mutex
	spare, total int
	kick         chan struct{} // a connection was taken or ended
}

// newDataPool returns the data connections' pool of a session whose
// handshake answer was h, or nil when the server offers none or the
// options want none.
func newDataPool(c *Client, ss streamServer, o ExposeOptions, h http.Header) *dataPool {
	srv, ok := ss.(*agentServer) // raw TCP agents carry no HTTP
	secret := h.Get(dataSecretHeader)
	max, err := strconv.Atoi(h.Get(dataMaxHeader))
	if !ok || secret == "" || err != nil || max <= 0 || o.DataConns < 0 || o.DataSpares < 0 || c.proxied() {
		return nil
	}
	return &dataPool{
		c: c, srv: srv, secret: secret, log: o.Logger,
		spares: o.DataSpares, max: min(max, o.DataConns),
		kick: make(chan struct{}, 1),
	}
}

// run keeps the spares dialed until ctx ends or the server refuses them.
func (p *dataPool) run(ctx context.Context) {
	backoff := DefaultExposeMinBackoff
	for {
		for p.short() {
			conn, err := p.c.dialData(ctx, p.secret)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				var e *Error
				if errors.As(err, &e) && e.StatusCode != http.StatusTooManyRequests && e.StatusCode < 500 {
					p.log.Warn("expose: the server refused data connections; requests go on the session", "err", err)
					return
				}
				p.log.Debug("expose: data connection failed", "err", err, "retry in", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, DefaultExposeMaxBackoff)
				continue
			}
			backoff = DefaultExposeMinBackoff
			p.mu.Lock()
			p.spare++
			p.total++
			p.mu.Unlock()
			if !p.srv.serveData(conn, p.taken, p.ended) {
				conn.Close()
				return // the agent is stopping
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
	}
}

// short reports whether a spare is missing.
func (p *dataPool) short() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spare < p.spares && p.total < p.max
}

// taken notes a spare taken into use.
func (p *dataPool) taken() {
	p.mu.Lock()
	p.spare--
	p.mu.Unlock()
	p.wake()
}

// ended notes a data connection's end.
func (p *dataPool) ended(used bool) {
	p.mu.Lock()
	p.total--
	if !used {
		p.spare--
	}
	p.mu.Unlock()
	p.wake()
}

func (p *dataPool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// dialData dials a data connection to the server and upgrades it.
func (c *Client) dialData(ctx context.Context, secret string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dataDialTimeout)
	defer cancel()
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", hostPort(c.base))
	if err != nil {
		return nil, err
	}
	if c.base.Scheme == "https" {
		tc := tls.Client(conn, c.tlsConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := &http.Request{
		Method: http.MethodGet, URL: &url.URL{Path: c.base.Path + dataConnPath}, Host: c.base.Host,
		ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {dataUpgrade}, dataSecretHeader: {secret}},
	}
	br := bufio.NewReaderSize(conn, 1<<10)
	err = req.Write(conn)
	var resp *http.Response
	if err == nil {
		resp, err = http.ReadResponse(br, req)
	}
	if err == nil && resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		err = unexpected(resp, body)
	}
	if err == nil && !stop() {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("data connection: %w", err)
	}
	if n := br.Buffered(); n > 0 {
		// A request came right behind the upgrade's answer.
		b, _ := br.Peek(n)
		return &prefixConn{Conn: conn, r: io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn)}, nil
	}
	return conn, nil
}

// proxied reports whether the client reaches the server through an HTTP
// proxy, which data connections, dialed directly, would bypass.
func (c *Client) proxied() bool {
	t, ok := c.hc.Transport.(*http.Transport)
	if c.hc.Transport == nil {
		t, ok = http.DefaultTransport.(*http.Transport)
	}
	if !ok || t.Proxy == nil {
		return !ok // a transport of its own: who knows how it dials
	}
	u, err := t.Proxy(&http.Request{URL: c.base})
	return err != nil || u != nil
}

// tlsConfig is the TLS configuration of the client's HTTP transport, for
// connections the client dials itself.
func (c *Client) tlsConfig() *tls.Config {
	var cfg *tls.Config
	if t, ok := c.hc.Transport.(*http.Transport); ok && t.TLSClientConfig != nil {
		cfg = t.TLSClientConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = c.base.Hostname()
	}
	cfg.NextProtos = []string{"http/1.1"}
	return cfg
}

// prefixConn is a connection whose first bytes were read ahead.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(b []byte) (int, error) { return c.r.Read(b) }
