package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/internal/httpapi"
)

// newForwardTransport returns the client that carries forwarded requests
// to other nodes: plain HTTP/1.1, so that upgrades pass through too.
func newForwardTransport(o Options) *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: o.ForwardDialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: o.ForwardHeaderTimeout,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}
}

// forwardRequest sends req to a node that holds c's name. Nodes are tried
// in random order; the next one is tried only when connecting failed and
// the request has no body (a body may be half sent).
func (h *Hub) forwardRequest(req *http.Request, c *call) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(req.Context(), h.opts.DirectoryTimeout)
	addrs, err := h.dir.Lookup(ctx, h.opts.Namespace, c.t.Name)
	cancel()
	if err != nil {
		if req.Context().Err() != nil {
			return nil, req.Context().Err()
		}
		h.log.Warn("relay directory lookup failed", "namespace", h.opts.Namespace, "name", c.t.Name, "err", err)
		return nil, httpapi.Errorf(http.StatusServiceUnavailable, "node directory unavailable")
	}
	self := h.advertiseURL()
	addrs = slices.DeleteFunc(addrs, func(a string) bool { return a == self })
	if len(addrs) == 0 {
		return nil, ErrNoBackend
	}
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	c.via = "forwarded"
	var lastErr error
	for i, addr := range addrs {
		out, err := h.forwardedRequest(req, c.in, addr)
		if err != nil {
			lastErr = err
			continue
		}
		resp, err := h.forward.RoundTrip(out)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		if req.Context().Err() != nil || !isDialError(err) || (req.Body != nil && req.Body != http.NoBody) {
			break
		}
		if i < len(addrs)-1 {
			h.log.Debug("relay forward failed, trying the next node", "namespace", h.opts.Namespace, "name", c.t.Name, "node", addr, "err", err)
		}
	}
	if req.Context().Err() != nil {
		return nil, req.Context().Err()
	}
	h.log.Warn("relay forward failed", "namespace", h.opts.Namespace, "name", c.t.Name, "err", lastErr)
	return nil, httpapi.Errorf(http.StatusBadGateway, "the node holding backend %q cannot be reached", c.t.Name)
}

// forwardedRequest is out re-addressed to node base: the user's original
// path, query and Host, marked as forwarded (signed with the cluster keys).
func (h *Hub) forwardedRequest(out, in *http.Request, base string) (*http.Request, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("bad node address %q", base)
	}
	f := out.Clone(out.Context())
	f.URL = &url.URL{
		Scheme:   u.Scheme,
		Host:     u.Host,
		Path:     strings.TrimSuffix(u.Path, "/") + in.URL.Path,
		RawPath:  "",
		RawQuery: in.URL.RawQuery,
	}
	if in.URL.RawPath != "" {
		f.URL.RawPath = strings.TrimSuffix(u.EscapedPath(), "/") + in.URL.RawPath
	}
	f.Host = in.Host
	mark := h.opts.Namespace
	if h.keys != nil {
		mark = h.keys.Sign(h.opts.Namespace, f)
	}
	f.Header.Set(ForwardedHeader, mark)
	return f, nil
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// announcer keeps the directory in step with the hub's local names: it
// registers a name as soon as its first backend arrives, renews every name
// every third of the TTL, and removes a name when its last backend leaves
// and at shutdown. It is the only goroutine that writes to the directory.
type announcer struct {
	h      *Hub
	wake   chan struct{}
	quit   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	listed map[string]bool // names registered under advert
	advert string
	waits  map[string][]chan struct{}
}

func newAnnouncer(h *Hub) *announcer {
	a := &announcer{
		h:      h,
		wake:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
		listed: make(map[string]bool),
		waits:  make(map[string][]chan struct{}),
	}
	go a.run()
	return a
}

func (a *announcer) kick() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *announcer) stop() {
	select {
	case <-a.quit:
	default:
		close(a.quit)
	}
	<-a.done
}

func (a *announcer) run() {
	defer close(a.done)
	renew := time.NewTicker(a.h.opts.RegisterTTL / 3)
	defer renew.Stop()
	for {
		select {
		case <-a.quit:
			a.unlistAll()
			return
		case <-a.wake:
			a.sync(false)
		case <-renew.C:
			a.sync(true)
		}
	}
}

func (a *announcer) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), a.h.opts.DirectoryTimeout)
}

// sync registers names that are new (all of them when renewing) and
// unregisters names that have no backend any more.
func (a *announcer) sync(renewAll bool) {
	h := a.h
	advert := h.advertiseURL()
	if advert == "" {
		return
	}
	names := h.Names()
	a.mu.Lock()
	listed := make(map[string]bool, len(a.listed))
	for n := range a.listed {
		listed[n] = true
	}
	a.mu.Unlock()
	live := make(map[string]bool, len(names))
	for _, n := range names {
		live[n] = true
		if listed[n] && !renewAll {
			continue
		}
		ctx, cancel := a.ctx()
		err := h.dir.Register(ctx, h.opts.Namespace, n, advert, h.opts.RegisterTTL)
		cancel()
		if err != nil {
			h.log.Warn("relay directory register failed", "namespace", h.opts.Namespace, "name", n, "err", err)
			continue
		}
		a.mu.Lock()
		a.listed[n] = true
		for _, ch := range a.waits[n] {
			close(ch)
		}
		delete(a.waits, n)
		a.mu.Unlock()
	}
	for n := range listed {
		if live[n] {
			continue
		}
		ctx, cancel := a.ctx()
		err := h.dir.Unregister(ctx, h.opts.Namespace, n, advert)
		cancel()
		if err != nil {
			h.log.Warn("relay directory unregister failed", "namespace", h.opts.Namespace, "name", n, "err", err)
		}
		a.mu.Lock()
		delete(a.listed, n)
		a.mu.Unlock()
	}
}

func (a *announcer) unlistAll() {
	h := a.h
	advert := h.advertiseURL()
	a.mu.Lock()
	names := make([]string, 0, len(a.listed))
	for n := range a.listed {
		names = append(names, n)
	}
	a.listed = map[string]bool{}
	a.mu.Unlock()
	for _, n := range names {
		ctx, cancel := a.ctx()
		if err := h.dir.Unregister(ctx, h.opts.Namespace, n, advert); err != nil {
			h.log.Warn("relay directory unregister failed", "namespace", h.opts.Namespace, "name", n, "err", err)
		}
		cancel()
	}
}

// announced returns a channel closed once name is listed in the directory.
func (a *announcer) announced(name string) <-chan struct{} {
	ch := make(chan struct{})
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.listed[name] {
		close(ch)
		return ch
	}
	a.waits[name] = append(a.waits[name], ch)
	return ch
}

// Announced returns a channel that is closed once name is listed in the
// directory for this node (at once without a directory): a readiness
// signal for tests and tools.
func (h *Hub) Announced(name string) <-chan struct{} {
	if h.announce == nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return h.announce.announced(name)
}

// ForwardToNodes is for a transport's own backend-side requests that
// belong to a relay held by another node (in the long-poll protocol, a
// response chunk posted to a node that does not hold the request). It sends
// r, with body, unchanged to each other node that lists name, one after
// another, until one answers with a status for which settled returns true,
// and writes that answer to w. It reports false, having written nothing,
// when the hub has no directory, r was itself forwarded (or is local
// only: WithLocalOnly), no other node
// lists name, or no node settled it: the caller then answers itself.
func (h *Hub) ForwardToNodes(w http.ResponseWriter, r *http.Request, name string, body []byte, settled func(status int) bool) bool {
	if h.forward == nil || r.Header.Get(ForwardedHeader) != "" || LocalOnly(r.Context()) {
		return false
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.DirectoryTimeout)
	addrs, err := h.dir.Lookup(ctx, h.opts.Namespace, name)
	cancel()
	if err != nil {
		h.log.Warn("relay directory lookup failed", "namespace", h.opts.Namespace, "name", name, "err", err)
		return false
	}
	self := h.advertiseURL()
	for _, addr := range addrs {
		if addr == self {
			continue
		}
		out, err := h.forwardedRequest(r, r, addr)
		if err != nil {
			continue
		}
		out.RequestURI = ""
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.ContentLength = int64(len(body))
		resp, err := h.forward.RoundTrip(out)
		if err != nil {
			if r.Context().Err() != nil {
				return true // nobody to answer
			}
			h.log.Debug("relay forward failed", "namespace", h.opts.Namespace, "name", name, "node", addr, "err", err)
			continue
		}
		if !settled(resp.StatusCode) {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			continue
		}
		hdr := w.Header()
		for k, v := range resp.Header {
			hdr[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
		resp.Body.Close()
		return true
	}
	return false
}
