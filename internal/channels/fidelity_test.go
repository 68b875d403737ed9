package channels_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/postern/postern/internal/node"
)

// raw sends one request as written (path and headers untouched, no
// redirect followed) and returns the answer as the wire carried it.
func (e *env) raw(method, path string, hdr ...string) (*http.Response, string) {
	e.t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(e.node.URL, "http://"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer nc.Close()
	var b strings.Builder
	b.WriteString(method + " " + path + " HTTP/1.1\r\nHost: pinghub.example\r\nConnection: close\r\n")
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Connection") {
			// Replaces the close above (a handshake's Connection: Upgrade).
			s := b.String()
			b.Reset()
			b.WriteString(strings.Replace(s, "Connection: close\r\n", "", 1))
		}
		b.WriteString(hdr[i] + ": " + hdr[i+1] + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(nc, b.String()); err != nil {
		e.t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(nc), &http.Request{Method: method})
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: body: %v", method, path, err)
	}
	return res, string(body)
}

// handshake is a valid websocket handshake but for what a test changes.
var handshake = []string{"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}

func without(hdr []string, name string) []string {
	var out []string
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] != name {
			out = append(out, hdr[i], hdr[i+1])
		}
	}
	return out
}

// TestPinghubWireAnswers pins pinghub's answers byte for byte, at the root
// (--channels-at-root, as pinghub was deployed) and under /c/: its router
// (gorilla/mux) redirected paths not in canonical form with a bodiless 301
// and refused other methods with a bodiless 405 (postern adds Allow); its
// handlers' 400s came from http.Error (the text, a newline); and
// gorilla/websocket refused a bad handshake with the status text.
func TestPinghubWireAnswers(t *testing.T) {
	for _, atRoot := range []bool{true, false} {
		mount := "/c"
		if atRoot {
			mount = ""
		}
		t.Run("mount="+mount, func(t *testing.T) {
			e := start(t, func(c *node.Config) { c.Channels.AtRoot = atRoot })
			plain := func(res *http.Response, body string, status int, want string) {
				t.Helper()
				if res.StatusCode != status || body != want || res.Header.Get("Content-Type") != "text/plain; charset=utf-8" ||
					res.Header.Get("X-Content-Type-Options") != "nosniff" {
					t.Fatalf("got %d %q %v, want %d %q as text/plain", res.StatusCode, body, res.Header, status, want)
				}
			}
			bodiless := func(res *http.Response, body string, status int) {
				t.Helper()
				length := res.ContentLength
				if res.Request.Method == "HEAD" && length == -1 {
					length = 0 // net/http sends no length for HEAD: the original's server was net/http too
				}
				if res.StatusCode != status || body != "" || length != 0 || res.Header.Get("Content-Type") != "" {
					t.Fatalf("got %d %q (length %d) %v, want a bodiless %d", res.StatusCode, body, res.ContentLength, res.Header, status)
				}
			}

			// 400 for the path: 74 bytes, as the original.
			const tooLong = "Error: bad request. Path length must be 1-256 Unicode characters (UTF-8).\n"
			if len(tooLong) != 74 {
				t.Fatalf("%d bytes", len(tooLong))
			}
			for _, m := range []string{"GET", "POST"} {
				res, body := e.raw(m, mount+"/"+strings.Repeat("x", 300))
				plain(res, body, 400, tooLong)
				res, body = e.raw(m, mount+"/%FF")
				plain(res, body, 400, "Error: bad request. Path must be valid Unicode (UTF-8).\n")
			}

			// 405 for other methods, before the path is looked at.
			for _, m := range []string{"PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"} {
				for _, p := range []string{mount + "/x", mount + "/%FF"} {
					res, body := e.raw(m, p)
					bodiless(res, body, 405)
					if res.Header.Get("Allow") != "GET, POST" {
						t.Fatalf("%s %s: Allow %q", m, p, res.Header.Get("Allow"))
					}
				}
			}

			// 301 to the canonical path, query kept, whatever the method
			// or handshake.
			for _, tc := range []struct {
				method, path, loc string
				hdr               []string
			}{
				{"GET", "/x/../a", "/a", nil},
				{"GET", "/x/../a?since=now&q=1", "/a?since=now&q=1", nil},
				{"POST", "//a", "/a", nil},
				{"GET", "/a/./b/", "/a/b/", nil},
				{"GET", "/a//b/..", "/a", nil},
				{"PUT", "//a", "/a", nil},
				{"GET", "//a", "/a", handshake},
				{"GET", "/%2E%2E/a", "/a", nil},
			} {
				res, body := e.raw(tc.method, mount+tc.path, tc.hdr...)
				bodiless(res, body, 301)
				if loc := res.Header.Get("Location"); loc != mount+tc.loc {
					t.Fatalf("%s %s: Location %q, want %q", tc.method, mount+tc.path, loc, mount+tc.loc)
				}
			}

			// Bad handshakes, as gorilla/websocket answered them.
			for _, tc := range []struct {
				name   string
				method string
				hdr    []string
				status int
				body   string
			}{
				{"no key", "GET", without(handshake, "Sec-WebSocket-Key"), 400, "Bad Request\n"},
				{"bad key", "GET", append(without(handshake, "Sec-WebSocket-Key"), "Sec-WebSocket-Key", "c2hvcnQ="), 400, "Bad Request\n"},
				{"no version", "GET", without(handshake, "Sec-WebSocket-Version"), 400, "Bad Request\n"},
				{"old version", "GET", append(without(handshake, "Sec-WebSocket-Version"), "Sec-WebSocket-Version", "8"), 400, "Bad Request\n"},
				{"POST with Upgrade", "POST", handshake, 405, "Method Not Allowed\n"},
				{"PUT with Upgrade", "PUT", without(handshake, "Sec-WebSocket-Key"), 405, "Method Not Allowed\n"},
			} {
				res, body := e.raw(tc.method, mount+"/ws", tc.hdr...)
				plain(res, body, tc.status, tc.body)
				if res.Header.Get("Sec-Websocket-Version") != "13" {
					t.Fatalf("%s: no Sec-WebSocket-Version in %v", tc.name, res.Header)
				}
			}
			// The path is checked before the handshake, as the original's
			// handler did.
			res, body := e.raw("PUT", mount+"/%FF", handshake...)
			plain(res, body, 400, "Error: bad request. Path must be valid Unicode (UTF-8).\n")

			// And a good handshake still upgrades.
			res, _ = e.raw("GET", mount+"/ws", handshake...)
			if res.StatusCode != 101 {
				t.Fatalf("handshake: %d", res.StatusCode)
			}
		})
	}
}
