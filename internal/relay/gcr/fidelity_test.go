package gcr_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/gcr/wire"
	"github.com/postern/postern/internal/relay/relaytest"
)

// proxyHeadersEcho is a backend that answers the proxy headers it got.
func proxyHeadersEcho(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "xff=%q host=%q proto=%q fwd=%q", r.Header.Values("X-Forwarded-For"),
		r.Header.Values("X-Forwarded-Host"), r.Header.Values("X-Forwarded-Proto"), r.Header.Values("Forwarded"))
}

// TestForwardedHeadersOnlyWhenAsked: the original relay added no
// X-Forwarded-* header, and neither does postern by default: backends get
// the user's headers as they came, through one node or two. With
// ForwardedHeaders (--relay-forwarded-headers) postern sets them as a proxy
// does: the address it saw, the user's Host, the scheme.
func TestForwardedHeadersOnlyWhenAsked(t *testing.T) {
	own := []string{"Host", "relay.example", "X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https", "Forwarded", "for=203.0.113.7"}
	for _, tc := range []struct {
		on              bool
		bare, withOwn   string
		twoNodesWithOwn string
	}{
		{false,
			`xff=[] host=[] proto=[] fwd=[]`,
			`xff=["203.0.113.7"] host=[] proto=["https"] fwd=["for=203.0.113.7"]`,
			`xff=["203.0.113.7"] host=[] proto=["https"] fwd=["for=203.0.113.7"]`},
		{true,
			`xff=["127.0.0.1"] host=["relay.example"] proto=["http"] fwd=[]`,
			`xff=["127.0.0.1"] host=["relay.example"] proto=["http"] fwd=["for=203.0.113.7"]`,
			`xff=["127.0.0.1, 127.0.0.1"] host=["relay.example"] proto=["http"] fwd=["for=203.0.113.7"]`},
	} {
		t.Run(fmt.Sprintf("forwarded-headers=%v", tc.on), func(t *testing.T) {
			dir := relaytest.NewDirectory()
			cfg := func(c *node.Config) { c.Directory = dir; c.Relay.ForwardedHeaders = tc.on }
			a, b := start(t, cfg), start(t, cfg)
			a.runClient("fh", backendServer(t, proxyHeadersEcho), nil)
			a.want(a.do("GET", "/client/fh/", nil, "Host", "relay.example"), 200, tc.bare)
			a.want(a.do("GET", "/client/fh/", nil, own...), 200, tc.withOwn)
			// Through node b, which forwards to a, where the relay client is.
			<-a.node.RelayAnnounced("fh")
			b.want(b.do("GET", "/client/fh/", nil, own...), 200, tc.twoNodesWithOwn)
		})
	}
}

// upgradedUser is a user's raw connection upgraded through the relay, and
// the request id the relay client got for it.
type upgradedUser struct {
	conn *net.TCPConn
	br   *bufio.Reader
	id   string
}

// upgrade opens a user connection to /client/<name>/socket with a
// websocket handshake and answers it 101 as the original relay client
// does: the poll takes the request, the first post carries the status and
// headers.
func (e *env) upgrade(name string) *upgradedUser {
	e.t.Helper()
	polled := e.pollAsync(name, 1)
	nc, err := net.Dial("tcp", strings.TrimPrefix(e.node.URL, "http://"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { nc.Close() })
	io.WriteString(nc, "GET /client/"+name+"/socket HTTP/1.1\r\nHost: relay.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	req := <-polled
	if req == nil || req.Method != "GET" || req.URL != "http://invalid/socket" {
		e.t.Fatalf("relayed request %+v", req)
	}
	e.want(e.post(&wire.Response{HasID: true, ID: req.ID, HasStatus: true, StatusCode: 101, Headers: []wire.Header{
		{Name: "Connection", Value: "Upgrade"}, {Name: "Upgrade", Value: "websocket"},
		{Name: "Sec-Websocket-Accept", Value: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="},
	}}), 200, "ok")
	u := &upgradedUser{conn: nc.(*net.TCPConn), br: bufio.NewReader(nc), id: req.ID}
	resp, err := http.ReadResponse(u.br, nil)
	if err != nil || resp.StatusCode != 101 {
		e.t.Fatalf("user got %v %v, want 101", resp, err)
	}
	return u
}

// requestStream is the original client's call for the user's bytes: a POST
// with an empty text/plain body.
func (e *env) requestStream(id string) <-chan result {
	return e.async("POST", "/server/requeststream?id="+url.QueryEscape(id), http.NoBody, "Content-Type", "text/plain")
}

// TestUpgradeCloseSequenceOfTheOriginalClient drives the calls the
// original relay client makes at the end of a websocket session, and
// checks postern answers them as the original server did. The user sends
// its close frame and hangs up (or only shuts its sending side); the relay
// client's parked request-stream call gets those bytes (not 410, which
// makes the original client close the backend connection under its own
// reader: "Failed to read from backend ... use of closed network
// connection"); it writes them to the backend, which answers with its
// close frame and ends the connection; the client posts that frame, then
// its last, empty, eof post: answered 200 ok (not 400 "Duplicate or
// invalid request ID"). Only then is the request over.
func TestUpgradeCloseSequenceOfTheOriginalClient(t *testing.T) {
	node := start(t, nil)
	for _, hangUp := range []bool{false, true} {
		t.Run(fmt.Sprintf("hang-up=%v", hangUp), func(t *testing.T) {
			e := &env{t: t, node: node.node, c: node.c}
			u := e.upgrade("wsclose")
			stream := e.requestStream(u.id)
			io.WriteString(u.conn, "user close frame")
			if hangUp {
				u.conn.Close()
			} else {
				u.conn.CloseWrite()
			}
			r := <-stream
			if r.status != 200 || r.body != "user close frame" || r.h.Get("Content-Type") != "application/octet-data" {
				t.Fatalf("request stream after the user's last bytes: %d %q %q (err %v)", r.status, r.body, r.h.Get("Content-Type"), r.err)
			}
			// The client asks for more at once, as the original does.
			stream = e.requestStream(u.id)
			e.want(e.post(&wire.Response{HasID: true, ID: u.id, Body: []byte("backend close frame")}), 200, "ok")
			e.want(e.post(&wire.Response{HasID: true, ID: u.id, EOF: true, BackendDurationMs: 42}), 200, "ok")
			if !hangUp {
				rest, err := io.ReadAll(u.br)
				if string(rest) != "backend close frame" || err != nil {
					t.Fatalf("user read %q %v", rest, err)
				}
			}
			// The request is over: the parked request-stream call ends with
			// 410 (the original answered it empty after its 30 s wait, then
			// 410), and so does the next; later chunks get 400.
			e.want(<-stream, 410, "No ongoing request with id "+u.id+"\n")
			e.want(<-e.requestStream(u.id), 410, "No ongoing request with id "+u.id+"\n")
			e.want(e.post(&wire.Response{HasID: true, ID: u.id, EOF: true}), 400, "Duplicate or invalid request ID "+u.id+"\n")
		})
	}
}

// TestUpgradeAfterTheUserEndsOnlyBackendBytesHoldIt: once the user has
// finished sending on an upgraded connection, the backend may still talk
// to it, but the relay client's empty keep-alive chunks no longer hold the
// request open: a backend that stays silent is let go after the inactive
// request timeout (the original held it for as long as the relay client
// lived). The request-stream call then gets 410, on which the relay client
// closes the backend connection, and the user's connection is closed.
func TestUpgradeAfterTheUserEndsOnlyBackendBytesHoldIt(t *testing.T) {
	// The timeout covers the set-up up to the backend's bytes (300 ms did
	// not, on a loaded machine: the request was gone before them).
	e := start(t, func(c *node.Config) { c.Relay.InactiveRequestTimeout = 2 * time.Second })
	u := e.upgrade("silent")
	stream := e.requestStream(u.id)
	u.conn.CloseWrite()
	e.want(e.post(&wire.Response{HasID: true, ID: u.id, Body: []byte("still talking")}), 200, "ok")
	buf := make([]byte, len("still talking"))
	if _, err := io.ReadFull(u.br, buf); err != nil || string(buf) != "still talking" {
		t.Fatalf("user read %q %v", buf, err)
	}
	// Keep-alives at the relay client's pace, much faster than the
	// timeout: they do not keep the request.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	ctx := ctxT(t)
	for {
		r := e.post(&wire.Response{HasID: true, ID: u.id})
		if r.status == 400 {
			break
		}
		if r.status != 200 {
			t.Fatalf("keep-alive: %d %q", r.status, r.body)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("keep-alives held the request of a user who had left")
		}
	}
	e.want(<-stream, 410, "No ongoing request with id "+u.id+"\n")
	if rest, err := io.ReadAll(u.br); len(rest) != 0 {
		t.Fatalf("user read %q %v after the end", rest, err)
	}
}
