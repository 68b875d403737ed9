package gcr_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/postern/postern/internal/relay/gcr/wire"
	"github.com/postern/postern/internal/servertest"
)

// fuzzNode is a node whose handler the fuzzers call in-process.
func fuzzNode(f *testing.F) http.Handler {
	cfg := servertest.Config()
	cfg.Relay.PollTimeout = 1 // polls answer at once
	cfg.Relay.PickupTimeout = 1
	srv := servertest.Start(f, cfg)
	return srv.Handler()
}

// FuzzServerResponse posts arbitrary bodies to /server/response: nothing
// is pending, so every answer is a one-line 400, never a 500 or a panic.
func FuzzServerResponse(f *testing.F) {
	h := fuzzNode(f)
	f.Add([]byte{})
	f.Add((&wire.Response{HasID: true, ID: "n:0123456789abcdef0123456789abcdef", HasStatus: true, StatusCode: 200, Body: []byte("x")}).Marshal())
	f.Add((&wire.Response{HasID: true, ID: "a:b:c"}).Marshal())
	f.Add((&wire.Response{HasStatus: true, StatusCode: -5}).Marshal())
	f.Add([]byte{0x22, 0x05, 'x', '\n', 'y', ':', 'z'})
	// The start of a message whose id comes before a large body, as
	// relayed as it arrives (read here in a request of unknown length).
	f.Add(append((&wire.Response{HasID: true, ID: "n:0123456789abcdef0123456789abcdef", HasStatus: true, StatusCode: 200, EOF: true}).AppendStreamHead(nil, 1<<20), 'x'))
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/server/response", bytes.NewReader(body))
		if len(body)%2 == 1 {
			req.ContentLength = -1 // read as chunked posts are: its start first
		}
		h.ServeHTTP(rec, req)
		if rec.Code != 400 {
			t.Fatalf("status %d %q", rec.Code, rec.Body.String())
		}
		if b := strings.TrimSuffix(rec.Body.String(), "\n"); strings.ContainsAny(b, "\r\n") {
			t.Fatalf("answer is not one line: %q", b)
		}
	})
}

// FuzzUserRequests sends arbitrary paths, server names and request-stream
// ids: clear 4xx/5xx answers of the protocol, never a 500 from postern
// itself or a panic.
func FuzzUserRequests(f *testing.F) {
	h := fuzzNode(f)
	f.Add("/client/x/y", "", "")
	f.Add("/client//", "", "")
	f.Add("/anything", "srv", "")
	f.Add("/server/requeststream", "", "n:00000000000000000000000000000000")
	f.Add("/server/request", "", "")
	f.Add("/client/%ff/x", "\x7f", "::")
	f.Fuzz(func(t *testing.T, path, serverName, id string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\r\n?#") {
			return
		}
		req, err := http.NewRequest("GET", "http://relay.test"+path, nil)
		if err != nil {
			return
		}
		q := req.URL.Query()
		if id != "" {
			q.Set("id", id)
		}
		if serverName != "" {
			q.Set("server", serverName)
			req.Header.Set("X-Server-Name", serverName)
		}
		req.URL.RawQuery = q.Encode()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code == 200, rec.Code == 204, rec.Code == 400, rec.Code == 403, rec.Code == 404, rec.Code == 405,
			rec.Code == 408, rec.Code == 410, rec.Code == 503:
		case rec.Code == 500 && strings.HasPrefix(rec.Body.String(), "cannot reach the client"):
			// An earlier input polled for this name: known, not picked up.
		default:
			t.Fatalf("%s (server %q, id %q): %d %q", path, serverName, id, rec.Code, rec.Body.String())
		}
	})
}

// FuzzServerBatch posts arbitrary bodies as batches of responses
// (wire.BatchContentType): nothing is pending, so every answer is a
// one-line 400, never a 500 or a panic.
func FuzzServerBatch(f *testing.F) {
	h := fuzzNode(f)
	id := "n:0123456789abcdef0123456789abcdef"
	one := (&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: []byte("x"), EOF: true}).Marshal()
	f.Add([]byte{})
	f.Add(wire.AppendDelimited(nil, one))
	f.Add(wire.AppendDelimited(wire.AppendDelimited(nil, one), (&wire.Response{HasID: true, ID: "a:b"}).Marshal()))
	f.Add(wire.AppendDelimited(nil, []byte{0xff}))
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/server/response", bytes.NewReader(body))
		req.Header.Set("Content-Type", wire.BatchContentType)
		if len(body)%2 == 1 {
			req.ContentLength = -1
		}
		h.ServeHTTP(rec, req)
		if rec.Code != 400 {
			t.Fatalf("status %d %q", rec.Code, rec.Body.String())
		}
		if b := strings.TrimSuffix(rec.Body.String(), "\n"); strings.ContainsAny(b, "\r\n") {
			t.Fatalf("answer is not one line: %q", b)
		}
	})
}
