package relay_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay"
)

// answer is what a test backend answers: a response made afresh for each
// request (the hub takes it over), or an error.
type answer func(r *http.Request) (*http.Response, error)

// twinNodes are two hubs serving /u/<name>/<rest> with the same backends,
// the second through the reverse proxy only. A request whose header has
// X-Test-No-XFF is relayed with Target.NoXForwarded.
type twinNodes struct {
	urls [2]string
	seen [2]chan string // what each backend saw, one line per request
}

func startTwins(t *testing.T, a answer) *twinNodes {
	t.Helper()
	tw := &twinNodes{}
	for i, mutate := range []func(*relay.Options){func(*relay.Options) {}, relay.ProxyOnly} {
		n := startNode(t, nil, mutate)
		seen := make(chan string, 1)
		tw.seen[i] = seen
		reg := n.hub.Register("b", roundTripper(func(r *http.Request) (*http.Response, error) {
			seen <- describeRequest(r)
			resp, err := a(r)
			if resp != nil {
				resp.Request = r
			}
			return resp, err
		}))
		t.Cleanup(reg.Close)
		// The node's own handler leaves NoXForwarded unset: this one
		// sets it on demand.
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name, path, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/u/"), "/")
			n.hub.Serve(w, r, relay.Target{Name: name, Path: "/" + path, RawQuery: r.URL.RawQuery,
				MaxRequestBodyBytes: 1 << 20, NoXForwarded: r.Header.Get("X-Test-No-Xff") != ""})
		}))
		t.Cleanup(srv.Close)
		tw.urls[i] = srv.URL
	}
	return tw
}

// describeRequest prints what a backend sees of a request, headers sorted.
func describeRequest(r *http.Request) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s host=%q cl=%d close=%v body=%v trailer=%v\n", r.Method, r.URL, r.Proto, r.Host, r.ContentLength, r.Close, r.Body != nil, r.Trailer)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, r.Header[k])
	}
	if r.Body != nil {
		body, err := io.ReadAll(r.Body)
		fmt.Fprintf(&b, "body %q %v\n", body, err)
	}
	return b.String()
}

// roundTripRaw sends the raw request to base's host and returns the raw
// answer without its Date line, and what the backend saw ("" if nothing).
func (tw *twinNodes) roundTripRaw(t testing.TB, i int, raw string) (string, string) {
	t.Helper()
	host := strings.TrimPrefix(tw.urls[i], "http://")
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		// The Date, and the type net/http sniffs from the body's first
		// write when nothing set one: on a stream both paths flush the
		// headers at once from a timer (the proxy's way), which races
		// that first write.
		if !strings.HasPrefix(line, "Date: ") && line != "Content-Type: text/plain; charset=utf-8\r\n" {
			out.WriteString(line)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				out.WriteString("<" + err.Error() + ">")
			}
			break
		}
	}
	seen := ""
	select {
	case seen = <-tw.seen[i]:
	default:
	}
	return out.String(), seen
}

// same sends raw to both nodes and fails when the answers or what the
// backends saw differ.
func (tw *twinNodes) same(t testing.TB, raw string) (answer, seen string) {
	t.Helper()
	fa, fs := tw.roundTripRaw(t, 0, raw)
	pa, ps := tw.roundTripRaw(t, 1, raw)
	if fa != pa {
		t.Errorf("request %q: the fast path answered\n%s\nthe proxy\n%s", raw, fa, pa)
	}
	if fs != ps {
		t.Errorf("request %q: through the fast path the backend saw\n%s\nthrough the proxy\n%s", raw, fs, ps)
	}
	return fa, fs
}

// trailerBody fills its response's Trailer at its end, as a transport's
// body does.
type trailerBody struct {
	r       *strings.Reader
	resp    *http.Response
	trailer http.Header
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		for k, v := range b.trailer {
			b.resp.Trailer[k] = v
		}
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

// cutBody fails after its content.
type cutBody struct{ r *strings.Reader }

func (b *cutBody) Read(p []byte) (int, error) {
	if b.r.Len() == 0 {
		return 0, errors.New("backend cut")
	}
	return b.r.Read(p)
}

func (b *cutBody) Close() error { return nil }

func response(status int, h http.Header, cl int64, body io.ReadCloser) *http.Response {
	if body == nil {
		body = http.NoBody
	}
	return &http.Response{StatusCode: status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h, ContentLength: cl, Body: body}
}

// text is a body of s without WriteTo (one with it is written by the
// hub itself, see TestBodyThatWritesItself).
func text(s string) io.ReadCloser { return io.NopCloser(struct{ io.Reader }{strings.NewReader(s)}) }

// Bodies of known length say it in their headers too: else net/http
// chooses between a length and chunks by whether the flush timer (10 ms,
// on both paths) fired before the body's end, which a loaded machine
// decides.

// TestFastPathAnswersAsTheProxy: for the same requests and the same
// backend answers, a hub's fast path and the reverse proxy answer the
// user byte for byte alike (status, headers with the hop-by-hop ones
// removed, body, chunking, trailers, error answers), and the backend
// sees the same request (path, Host, hop-by-hop headers removed, "Te:
// trailers", X-Forwarded-*, User-Agent, body).
func TestFastPathAnswersAsTheProxy(t *testing.T) {
	answers := map[string]answer{
		"plain": func(r *http.Request) (*http.Response, error) {
			return response(200, http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"5"}, "Set-Cookie": {"a=1", "b=2"}}, 5, text("hello")), nil
		},
		"hop-by-hop": func(r *http.Request) (*http.Response, error) {
			return response(201, http.Header{"Connection": {"X-Hop, keep-alive", " x-other "}, "X-Hop": {"1"}, "X-Other": {"2"},
				"Keep-Alive": {"timeout=5"}, "Proxy-Connection": {"keep-alive"}, "Te": {"x"}, "Trailer": {"X-T"},
				"Transfer-Encoding": {"gzip"}, "Upgrade": {"h2c"}, "Proxy-Authenticate": {"Basic"}, "X-Kept": {"yes"},
				"X-Empty": {}, "x-lower-case": {"v"}, "Content-Length": {"2"}}, 2, text("ok")), nil
		},
		"unknown length": func(r *http.Request) (*http.Response, error) {
			return response(200, http.Header{"X-A": {"1"}}, -1, text("streamed body")), nil
		},
		"event stream": func(r *http.Request) (*http.Response, error) {
			return response(200, http.Header{"Content-Type": {"Text/Event-Stream; charset=utf-8"}}, 11, text("data: x\n\n\n")), nil
		},
		"bad event stream type": func(r *http.Request) (*http.Response, error) {
			return response(200, http.Header{"Content-Type": {"text/event-stream; a=1; a=2"}, "Content-Length": {"3"}}, 3, text("abc")), nil
		},
		"trailers": func(r *http.Request) (*http.Response, error) {
			resp := response(200, http.Header{}, -1, nil)
			resp.Trailer = http.Header{"X-Early": nil}
			resp.Body = &trailerBody{r: strings.NewReader("body"), resp: resp, trailer: http.Header{"X-Early": {"1"}, "X-Late": {"2"}}}
			return resp, nil
		},
		"announced trailers only": func(r *http.Request) (*http.Response, error) {
			resp := response(200, http.Header{}, 4, nil)
			resp.Trailer = http.Header{"X-Sum": nil}
			resp.Body = &trailerBody{r: strings.NewReader("body"), resp: resp, trailer: http.Header{"X-Sum": {"abc"}}}
			return resp, nil
		},
		"writes itself": func(r *http.Request) (*http.Response, error) {
			tr := http.Header{"X-Early": {"yes"}}
			// Flushed as it goes, as the long-poll transport's: the
			// proxy also flushes the headers from a timer of its own,
			// which may come first or not (the fast path leaves that to
			// the body).
			resp := response(200, http.Header{"X-Head": {"1"}, "Connection": {"X-Head2"}, "X-Head2": {"gone"}}, -1, nil)
			resp.Trailer = tr
			resp.Body = &writerToBody{parts: []string{"first\n", "second\n"}, trailer: tr, flushed: make(chan struct{}, 2)}
			return resp, nil
		},
		"writes itself, known length": func(r *http.Request) (*http.Response, error) {
			return response(200, http.Header{"Content-Length": {"2"}}, 2, &writerToBody{parts: []string{"ok"}, trailer: http.Header{}}), nil
		},
		"no content": func(r *http.Request) (*http.Response, error) {
			return response(204, http.Header{"X-A": {"1"}}, 0, nil), nil
		},
		"not modified": func(r *http.Request) (*http.Response, error) {
			return response(304, http.Header{"Etag": {`"x"`}, "Content-Length": {"100"}}, 0, nil), nil
		},
		"head": func(r *http.Request) (*http.Response, error) {
			return response(200, http.Header{"Content-Length": {"1000"}}, 1000, nil), nil
		},
		"status error": func(r *http.Request) (*http.Response, error) {
			return nil, httpapi.Errorf(http.StatusTeapot, "short and stout")
		},
		"transport error": func(r *http.Request) (*http.Response, error) {
			return nil, errors.New("connection refused")
		},
		"switch unasked": func(r *http.Request) (*http.Response, error) {
			return response(101, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, 0, nil), nil
		},
	}
	requests := []string{
		"GET /u/b/path?q=1&r=%2F HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n",
		"GET /u/b/x HTTP/1.1\r\nHost: site.example\r\nUser-Agent: curl/8\r\nConnection: keep-alive, X-Req-Hop, close\r\nX-Req-Hop: 1\r\n" +
			"Te: deflate, Trailers\r\nProxy-Authorization: Basic eA==\r\nKeep-Alive: 5\r\nX-Forwarded-For: 203.0.113.9\r\nForwarded: for=x\r\n" +
			"X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n\r\n",
		"GET /u/b/x HTTP/1.1\r\nHost: site.example\r\nX-Test-No-Xff: 1\r\nX-Forwarded-For: 203.0.113.9\r\nForwarded: for=x\r\nConnection: close\r\n\r\n",
		"GET /u/b/x HTTP/1.1\r\nHost: site.example\r\nX-Postern-Forwarded: forged\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
		"POST /u/b/form HTTP/1.1\r\nHost: site.example\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
		"POST /u/b/chunked HTTP/1.1\r\nHost: site.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HEAD /u/b/h HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n",
		"GET /u/b/x HTTP/1.0\r\nHost: site.example\r\n\r\n",
	}
	for name, a := range answers {
		t.Run(name, func(t *testing.T) {
			tw := startTwins(t, a)
			for _, raw := range requests {
				tw.same(t, raw)
			}
		})
	}
	// What both paths give is what a proxy gives.
	tw0 := startTwins(t, answers["hop-by-hop"])
	ans, seen := tw0.same(t, requests[1])
	for _, want := range []string{"HTTP/1.1 201 Created\r\n", "X-Kept: yes\r\n", "X-Lower-Case: v\r\n", "\r\n\r\nok"} {
		if !strings.Contains(ans, want) {
			t.Errorf("answer %q lacks %q", ans, want)
		}
	}
	for _, gone := range []string{"X-Hop", "X-Other", "Keep-Alive", "Proxy-Connection", "Upgrade", "Proxy-Authenticate", "Te:"} {
		if strings.Contains(ans, gone) {
			t.Errorf("answer %q has hop-by-hop %q", ans, gone)
		}
	}
	for _, want := range []string{`Te: ["trailers"]`, `User-Agent: ["curl/8"]`, `X-Forwarded-For: ["127.0.0.1"]`, `X-Forwarded-Host: ["site.example"]`, `X-Forwarded-Proto: ["http"]`, `Forwarded: ["for=x"]`} {
		if !strings.Contains(seen, want) {
			t.Errorf("the backend saw %q, without %q", seen, want)
		}
	}
	for _, gone := range []string{"X-Req-Hop", "Proxy-Authorization", "Keep-Alive", "Connection"} {
		if strings.Contains(seen, gone) {
			t.Errorf("the backend saw %q, with hop-by-hop %q", seen, gone)
		}
	}
	// A backend with no name.
	tw := startTwins(t, answers["plain"])
	if ans, _ := tw.same(t, "GET /u/none/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(ans, "HTTP/1.1 502 ") {
		t.Errorf("no backend: %q", ans)
	}
}

// TestFastPathCutIsAnAbort: a body that fails midway cuts the user's
// connection on both paths.
func TestFastPathCutIsAnAbort(t *testing.T) {
	tw := startTwins(t, func(r *http.Request) (*http.Response, error) {
		return response(200, http.Header{}, 10, &cutBody{r: strings.NewReader("part")}), nil
	})
	for i := range 2 {
		resp, err := client(t).Get(tw.urls[i] + "/u/b/")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		<-tw.seen[i]
		if err == nil {
			t.Fatalf("path %d: a cut response looked complete", i)
		}
	}
}

// FuzzFastPathAnswersAsTheProxy: any request headers and backend answer
// headers (status, header lines, known or unknown length) give the same
// answer and the same backend request on both paths.
func FuzzFastPathAnswersAsTheProxy(f *testing.F) {
	f.Add("Connection: X-A, close\nX-A: 1\nTe: trailers", "Connection: x-b\nX-B: 2\nContent-Type: text/event-stream", 200, true)
	f.Add("Connection: close", "Keep-Alive: 1\nConnection: ,,keep-alive ,\nTrailer: X", 203, false)
	f.Add("Te: trailers;q=1, TRAILERS", "content-type: TEXT/EVENT-STREAM;;\nx-y: \tz", 500, true)
	f.Add("Connection: Upgrade", "Connection: \"quoted\"\nX-Forwarded-For: 1", 404, false)
	f.Fuzz(func(t *testing.T, reqHeaders, respHeaders string, status int, known bool) {
		if status < 200 || status > 999 {
			status = 200
		}
		h := http.Header{}
		for line := range strings.SplitSeq(respHeaders, "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok {
				h[k] = append(h[k], strings.TrimLeft(v, " "))
			}
		}
		cl := int64(-1)
		if known {
			cl = 4
			h["Content-Length"] = []string{"4"}
		}
		tw := startTwinsOnce(t, func(r *http.Request) (*http.Response, error) {
			return response(status, h.Clone(), cl, text("body")), nil
		})
		var raw strings.Builder
		raw.WriteString("GET /u/b/f HTTP/1.1\r\nHost: site.example\r\n")
		for line := range strings.SplitSeq(reqHeaders, "\n") {
			if strings.ContainsAny(line, "\r") || !strings.Contains(line, ":") {
				continue
			}
			raw.WriteString(line + "\r\n")
		}
		raw.WriteString("Connection: close\r\n\r\n")
		tw.same(t, raw.String())
	})
}

// startTwinsOnce starts twin nodes for one fuzz input.
func startTwinsOnce(t *testing.T, a answer) *twinNodes { return startTwins(t, a) }
