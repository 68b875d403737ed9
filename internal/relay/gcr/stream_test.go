package gcr_test

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/node"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
	"github.com/postern/postern/internal/relay/gcr/wire"
	"github.com/postern/postern/internal/relay/relaytest"
)

// streamedPost starts a POST /server/response whose body the test writes
// as it goes, and returns the writer and the post's result.
func (e *env) streamedPost() (*io.PipeWriter, <-chan result) {
	pr, pw := io.Pipe()
	return pw, e.async("POST", "/server/response", pr, "Content-Type", wire.ResponseContentType)
}

// TestStreamedBodyGoesAsItArrives: a response whose id comes before its
// large body is relayed to the user while the relay client still sends
// it, with its length known (eof before the body) and the trailers that
// follow the body; the poll's answer says the node does this.
func TestStreamedBodyGoesAsItArrives(t *testing.T) {
	e := start(t, nil)
	polled := make(chan *wire.Request, 1)
	go func() {
		r, req := e.poll("s")
		if r.h.Get(wire.StreamHeader) != "1" {
			t.Errorf("poll answer without %s: %v", wire.StreamHeader, r.h)
		}
		polled <- req
	}()
	if err := e.node.WaitForRelayPolls(ctxT(t), "s", 1); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", e.node.URL+"/client/s/big", nil)
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := e.c.Do(req)
		if err != nil {
			t.Error(err)
		}
		respc <- resp
	}()
	id := (<-polled).ID
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	head := (&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, EOF: true,
		Headers: []wire.Header{{Name: "X-Big", Value: "yes"}, {Name: "Content-Length", Value: strconv.Itoa(len(body))}}}).AppendStreamHead(nil, len(body))
	pw, posted := e.streamedPost()
	pw.Write(head)
	pw.Write(body[:len(body)/2])
	resp := <-respc
	if resp == nil {
		t.FailNow()
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(body)) || resp.Header.Get("X-Big") != "yes" {
		t.Fatalf("%d, length %d, %v", resp.StatusCode, resp.ContentLength, resp.Header)
	}
	// The first half reaches the user before the relay client sends more.
	got := make([]byte, len(body)/2)
	if _, err := io.ReadFull(resp.Body, got); err != nil || !bytes.Equal(got, body[:len(body)/2]) {
		t.Fatalf("first half: %v", err)
	}
	pw.Write(body[len(body)/2:])
	pw.Write((&wire.Response{Trailers: []wire.Header{{Name: "X-Sum", Value: "42"}}}).AppendStreamTail(nil))
	pw.Close()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(rest, body[len(body)/2:]) {
		t.Fatalf("second half: %d bytes, %v", len(rest), err)
	}
	if r := <-posted; r.status != 200 || r.body != "ok" {
		t.Fatalf("post: %d %q %v", r.status, r.body, r.err)
	}
}

// TestStreamedBodyWithTrailersAndMore: a streamed body without eof, then
// a last chunk; trailers after the streamed body reach the user.
func TestStreamedBodyWithTrailersAndMore(t *testing.T) {
	e := start(t, nil)
	polled := e.pollAsync("t", 1)
	res := e.async("GET", "/client/t/", nil)
	id := (<-polled).ID
	body := bytes.Repeat([]byte("x"), 200<<10)
	m := &wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, Body: body,
		Trailers: []wire.Header{{Name: "Grpc-Status", Value: "0"}}}
	msg := append(append(m.AppendStreamHead(nil, len(body)), body...), m.AppendStreamTail(nil)...)
	if r := e.postRaw(msg); r.status != 200 {
		t.Fatalf("streamed post: %d %q", r.status, r.body)
	}
	if r := e.post(&wire.Response{HasID: true, ID: id, Body: []byte("end"), EOF: true}); r.status != 200 {
		t.Fatalf("last post: %d %q", r.status, r.body)
	}
	r := <-res
	if r.err != nil || r.status != 200 || r.body != string(body)+"end" || r.tr.Get("Grpc-Status") != "0" {
		t.Fatalf("got %d, %d bytes, trailers %v, %v", r.status, len(r.body), r.tr, r.err)
	}
}

// TestStreamedBodyCutIsAnError: a relay client that stops in the middle of
// a streamed body leaves the user with an error, never a body that looks
// complete; a user that goes away in the middle gets the post a 400.
func TestStreamedBodyCutIsAnError(t *testing.T) {
	e := start(t, nil)
	polled := e.pollAsync("c", 1)
	res := e.async("GET", "/client/c/", nil)
	id := (<-polled).ID
	pw, posted := e.streamedPost()
	pw.Write((&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, EOF: true}).AppendStreamHead(nil, 1<<20))
	pw.Write(bytes.Repeat([]byte("y"), 100<<10))
	pw.CloseWithError(io.ErrUnexpectedEOF) // the relay client's connection breaks
	if r := <-res; r.err == nil {
		t.Fatalf("a cut body looked complete: %d, %d bytes", r.status, len(r.body))
	}
	<-posted

	polled = e.pollAsync("c", 1)
	req, _ := http.NewRequest("GET", e.node.URL+"/client/c/", nil)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Error(err)
		}
		respc <- resp
	}()
	id = (<-polled).ID
	pw, posted = e.streamedPost()
	pw.Write((&wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200}).AppendStreamHead(nil, 4<<20))
	pw.Write(bytes.Repeat([]byte("z"), 100<<10))
	resp := <-respc
	if resp == nil {
		t.FailNow()
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadByte(); err != nil {
		t.Fatal(err)
	}
	tr.CloseIdleConnections()
	resp.Body.Close() // the user goes away
	go io.Copy(pw, bytes.NewReader(make([]byte, 4<<20)))
	r := <-posted
	pw.Close()
	if r.err == nil && r.status != 400 {
		t.Fatalf("post after the user left: %d %q", r.status, r.body)
	}
}

// TestSharedNodesDoNotOfferStreams: nodes that share their backends do
// not offer streamed bodies (a post may reach a node that does not hold
// its request), and a message in that layout posted to the node that
// does not hold the request is read whole and forwarded to the one that
// does.
func TestSharedNodesDoNotOfferStreams(t *testing.T) {
	dir := relaytest.NewDirectory()
	shared := func(c *node.Config) { c.Directory = dir }
	a, b := start(t, shared), start(t, shared)
	polled := make(chan *wire.Request, 1)
	go func() {
		r, req := a.poll("w")
		if v := r.h.Get(wire.StreamHeader); v != "" {
			t.Errorf("a shared node offers streamed bodies: %q", v)
		}
		polled <- req
	}()
	if err := a.node.WaitForRelayPolls(ctxT(t), "w", 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.node.RelayAnnounced("w"):
	case <-ctxT(t).Done():
		t.Fatal("never announced")
	}
	res := a.async("GET", "/client/w/", nil)
	id := (<-polled).ID
	body := bytes.Repeat([]byte("w"), 300<<10)
	m := &wire.Response{HasID: true, ID: id, HasStatus: true, StatusCode: 200, EOF: true, Body: body}
	if r := b.postRaw(append(m.AppendStreamHead(nil, len(body)), body...)); r.status != 200 {
		t.Fatalf("post to the other node: %d %q", r.status, r.body)
	}
	if r := <-res; r.err != nil || r.status != 200 || r.body != string(body) {
		t.Fatalf("got %d, %d bytes, %v", r.status, len(r.body), r.err)
	}
}

// TestTunedRelayClient: the relay client as postern relay runs it
// (gcrclient.Tuned: polls that follow the load, eager chunks, bodies
// streamed through the server) relays what the original's settings do:
// methods, headers and bodies, a body that trickles (each piece reaches
// the user without waiting for the next), trailers, and websockets.
func TestTunedRelayClient(t *testing.T) {
	e := start(t, nil)
	tick := make(chan struct{})
	be := backendServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("X-Method", r.Method)
			w.Write(b)
		case "/trickle":
			for range 3 {
				io.WriteString(w, "piece\n")
				w.(http.Flusher).Flush()
				<-tick
			}
		case "/trailers":
			w.Header().Set("Trailer", "X-Checksum")
			w.Write(bytes.Repeat([]byte("t"), 300<<10))
			w.Header().Set("X-Checksum", "abc")
		case "/ws":
			echoWebsocket(w, r)
		}
	})
	e.runClient("tuned", be, func(o *gcrclient.Options) {
		*o = gcrclient.Tuned(*o)
		o.ChunkDelay = 5 * time.Millisecond
	})
	big := bytes.Repeat([]byte("b"), 3<<20)
	r := e.do("PUT", "/client/tuned/echo", bytes.NewReader(big))
	if r.err != nil || r.status != 200 || r.body != string(big) || r.h.Get("X-Method") != "PUT" {
		t.Fatalf("echo: %d, %d bytes, %v", r.status, len(r.body), r.err)
	}
	resp, err := e.c.Get(e.node.URL + "/client/tuned/trickle")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		if line, err := br.ReadString('\n'); line != "piece\n" || err != nil {
			t.Fatalf("piece %d: %q %v", i, line, err)
		}
		tick <- struct{}{}
	}
	resp.Body.Close()
	r = e.do("GET", "/client/tuned/trailers", nil)
	if r.err != nil || len(r.body) != 300<<10 || r.tr.Get("X-Checksum") != "abc" {
		t.Fatalf("trailers: %d bytes, %v, %v", len(r.body), r.tr, r.err)
	}
	ctx := ctxT(t)
	c, _, err := websocket.Dial(ctx, e.node.URL+"/client/tuned/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	msg := bytes.Repeat([]byte("w"), 200<<10)
	if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.Read(ctx); err != nil || !bytes.Equal(b, append([]byte("echo:"), msg...)) {
		t.Fatalf("websocket echo: %d bytes, %v", len(b), err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// echoWebsocket answers every message with "echo:" and the message.
func echoWebsocket(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	for {
		typ, b, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, append([]byte("echo:"), b...)); err != nil {
			return
		}
	}
}

// TestStreamedBodyForUnknownIDIsRefusedAtOnce: on a node that shares its
// backends with no other, a large body in the streamed layout for a
// request it does not hold is refused with a 400 from its start, without
// waiting for the rest of it.
func TestStreamedBodyForUnknownIDIsRefusedAtOnce(t *testing.T) {
	e := start(t, nil)
	pw, posted := e.streamedPost()
	defer pw.Close()
	go func() {
		pw.Write((&wire.Response{HasID: true, ID: "gone:0123456789abcdef0123456789abcdef", HasStatus: true, StatusCode: 200, EOF: true}).AppendStreamHead(nil, 64<<20))
		pw.Write(bytes.Repeat([]byte("g"), 100<<10)) // and never the rest
	}()
	if r := <-posted; r.status != 400 || !strings.Contains(r.body, "gone:") {
		t.Fatalf("post for an unknown id: %d %q %v", r.status, r.body, r.err)
	}
}
