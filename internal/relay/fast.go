package relay

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/internal/httpapi"
	"golang.org/x/net/http/httpguts"
)

// The fast path: most relayed requests (no upgrade, no Expect, no request
// trailers) are relayed by the hub itself rather than through
// httputil.ReverseProxy, with the proxy's semantics step for step (the
// outbound request's hop-by-hop headers, "Te: trailers", X-Forwarded-*
// through the same rewrite, an empty User-Agent when there was none,
// informational answers passed on; the answer's hop-by-hop headers
// removed, its trailers announced and sent, its flushing). It costs a
// third of the proxy's allocations per request: one copy of the request
// (the proxy makes three, and one of its URL), the answer's header values
// shared rather than copied one by one, and no context, trace, mutex or
// timer of its own per request where the call's serve. Upgrades and
// everything else go through the proxy, which the tests compare it with
// (TestFastPathAnswersAsTheProxy, FuzzFastPathAnswersAsTheProxy). One
// difference: a body that writes itself (writeDirect) flushes itself, and
// the proxy's timer that flushes the headers of a stream at once, racing
// such a body's first write, is left out.

// fastOK reports whether r can take the fast path.
func fastOK(r *http.Request) bool {
	if r.Trailer != nil {
		return false
	}
	h := r.Header
	if _, ok := h["Upgrade"]; ok {
		return false
	}
	if _, ok := h["Expect"]; ok {
		return false
	}
	return true
}

// fastContext is ctx with what the fast path's round trip needs: the
// trace that passes informational answers on to w.
func (c *call) fastContext(ctx context.Context, w http.ResponseWriter) context.Context {
	c.w = w
	c.trace.Got1xxResponse = c.got1xx
	return httptrace.WithClientTrace(ctx, &c.trace)
}

// serveFast relays out, the user's request in (a shallow copy of it with
// the call's fastContext and body limit), as the reverse proxy would.
func (h *Hub) serveFast(w http.ResponseWriter, in, out *http.Request, c *call) {
	c.url = *in.URL
	out.URL = &c.url
	out.Header = in.Header.Clone()
	if out.Header == nil {
		out.Header = make(http.Header)
	}
	if in.ContentLength == 0 {
		out.Body = nil // as the proxy does, for http.Transport's retries
	}
	if out.Body != nil {
		// The backend's transport may close it: the user's body stays
		// open (Serve closes it), as with the proxy's own wrapper.
		c.reqBody = countingReader{rc: out.Body, n: &c.up, noClose: true}
		out.Body = &c.reqBody
	}
	out.Close = false
	httpapi.RemoveHopByHop(out.Header)
	if httpguts.HeaderValuesContainsToken(in.Header["Te"], "trailers") {
		out.Header.Set("Te", "trailers")
	}
	for _, k := range proxyHeaders {
		delete(out.Header, k)
	}
	pr := httputil.ProxyRequest{In: in, Out: out}
	h.rewriteCall(&pr, c)
	out = pr.Out
	if _, ok := out.Header["User-Agent"]; !ok {
		// Keep Go's own User-Agent out, as the proxy does.
		out.Header["User-Agent"] = []string{""}
	}

	res, err := h.roundTripCall(out, c)
	c.rtMu.Lock()
	c.rtDone = true
	c.rtMu.Unlock()
	if err != nil {
		h.fail(w, out, c, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// The proxy's answer to a backend switching protocols that the
		// user did not ask for (it relays the switch when the backend
		// names no protocol; the fast path refuses that too).
		res.Body.Close()
		up := httpapi.UpgradeType(res.Header)
		switch {
		case !isPrint(up):
			err = fmt.Errorf("backend tried to switch to invalid protocol %q", up)
		case up != "":
			err = fmt.Errorf("backend tried to switch protocol %q when %q was requested", up, "")
		default:
			err = fmt.Errorf("backend switched protocols when none was requested")
		}
		h.fail(w, out, c, err)
		return
	}
	httpapi.RemoveHopByHop(res.Header)
	h.takeDirect(res, c)
	shareHeader(w.Header(), res.Header)
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		w.Header().Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)
	if c.direct != nil {
		res.Body.Close() // the emptyBody in its place
	} else if err := h.copyBody(w, res, c); err != nil {
		defer res.Body.Close()
		if out.Context().Value(http.ServerContextKey) == nil {
			return // as the proxy, outside a server
		}
		panic(http.ErrAbortHandler)
	} else {
		res.Body.Close() // now: it fills res.Trailer
	}
	if len(res.Trailer) > 0 {
		// Chunked, so that net/http adds no Content-Length of its own to
		// a short body.
		flush(w)
	}
	if len(res.Trailer) == announced {
		copyHeader(w.Header(), res.Trailer)
	} else {
		for k, vv := range res.Trailer {
			k = http.TrailerPrefix + k
			for _, v := range vv {
				w.Header().Add(k, v)
			}
		}
	}
	if c.direct != nil {
		h.writeDirect(w, c)
	}
}

// got1xx passes an informational answer on to the user while the round
// trip lasts, as the proxy does.
func (c *call) got1xx(code int, header textproto.MIMEHeader) error {
	c.rtMu.Lock()
	defer c.rtMu.Unlock()
	if c.rtDone {
		return nil
	}
	h := c.w.Header()
	copyHeader(h, http.Header(header))
	c.w.WriteHeader(code)
	clear(h) // WriteHeader keeps them for a 1xx
	return nil
}

// copyBody copies a response body that has no WriteTo to the user,
// flushing as the proxy does: event streams and bodies of unknown length
// at every write, others at most FlushInterval late.
func (h *Hub) copyBody(w http.ResponseWriter, res *http.Response, c *call) error {
	var dst io.Writer = w
	if latency := h.flushInterval(res); latency != 0 {
		c.lw = latencyWriter{dst: w, latency: latency, flushPending: true}
		c.lw.t = time.AfterFunc(latency, c.lw.delayedFlush) // the headers go then, too
		defer c.lw.stop()
		dst = &c.lw
	}
	buf := bufferPool{}.Get()
	defer bufferPool{}.Put(buf)
	for {
		nr, rerr := res.Body.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			if werr != nil {
				return werr
			}
			if nr != nw {
				return io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			if rerr != context.Canceled {
				h.log.Debug("relay: backend body read failed", "namespace", h.opts.Namespace, "name", c.t.Name, "err", rerr)
			}
			return rerr
		}
	}
}

// flushInterval is the proxy's: event streams and bodies of unknown
// length are flushed at once.
func (h *Hub) flushInterval(res *http.Response) time.Duration {
	if ct := res.Header.Get("Content-Type"); containsFoldASCII(ct, "event-stream") {
		// Only then can it be one, so only then is it parsed.
		if base, _, _ := mime.ParseMediaType(ct); base == "text/event-stream" {
			return -1
		}
	}
	if res.ContentLength == -1 {
		return -1
	}
	return h.opts.FlushInterval
}

// latencyWriter is httputil's maxLatencyWriter: what is written is
// flushed at most latency later (negative: at once).
type latencyWriter struct {
	dst     http.ResponseWriter
	latency time.Duration

	mu           sync.Mutex // t, flushPending, and flushing dst
	t            *time.Timer
	flushPending bool
}

func (m *latencyWriter) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.dst.Write(p)
	if m.latency < 0 {
		flush(m.dst)
		return n, err
	}
	if m.flushPending {
		return n, err
	}
	if m.t == nil {
		m.t = time.AfterFunc(m.latency, m.delayedFlush)
	} else {
		m.t.Reset(m.latency)
	}
	m.flushPending = true
	return n, err
}

func (m *latencyWriter) delayedFlush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.flushPending { // stopped, but the timer's function had started
		return
	}
	flush(m.dst)
	m.flushPending = false
}

func (m *latencyWriter) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushPending = false
	if m.t != nil {
		m.t.Stop()
	}
}

// flush flushes w, found under the wrappers that Unwrap, as
// http.ResponseController does, without making one.
func flush(w http.ResponseWriter) error {
	for {
		switch t := w.(type) {
		case interface{ FlushError() error }:
			return t.FlushError()
		case http.Flusher:
			t.Flush()
			return nil
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return http.ErrNotSupported
		}
	}
}

// enableFullDuplex is http.ResponseController's EnableFullDuplex, without
// making one.
func enableFullDuplex(w http.ResponseWriter) error {
	for {
		switch t := w.(type) {
		case interface{ EnableFullDuplex() error }:
			return t.EnableFullDuplex()
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return http.ErrNotSupported
		}
	}
}

// shareHeader adds src's values to dst as the proxy's header copy does,
// but gives dst src's value slices where dst has none of its own: src is
// a response the hub owns and drops once written.
func shareHeader(dst, src http.Header) {
	for k, vv := range src {
		if len(vv) == 0 {
			continue
		}
		k = http.CanonicalHeaderKey(k)
		if old, ok := dst[k]; ok {
			dst[k] = append(old, vv...)
		} else {
			dst[k] = vv
		}
	}
}

// copyHeader is the proxy's.
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

func equalFoldASCII(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if lowerASCII(s[i]) != lowerASCII(t[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + ('a' - 'A')
	}
	return b
}

// containsFoldASCII reports whether s contains sub (lower-case ASCII),
// ignoring ASCII case.
func containsFoldASCII(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if equalFoldASCII(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

func isPrint(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
