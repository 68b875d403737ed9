package expose_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/postern/postern/internal/expose/muxconn"
	"github.com/postern/postern/internal/servertest"
)

// rawAgent is a native agent written for the tests at the wire's level:
// a yamux session over the agent websocket, each stream the server opens
// handed to serve. It stands for agents of other versions than
// client.Expose's.
type rawAgent struct {
	mu      sync.Mutex
	streams int
}

func (a *rawAgent) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.streams
}

// dialRawAgent connects a raw agent named name to n; serve runs in a
// goroutine of its own for each stream. Everything stops when the test
// ends.
func dialRawAgent(t *testing.T, n *servertest.Node, name string, serve func(st *yamux.Stream)) *rawAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.URL, "http")+"/agent?name="+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(muxconn.ReadLimit())
	sess, err := yamux.Server(muxconn.Conn(ctx, ws), muxconn.Config(15*time.Second, 4<<20))
	if err != nil {
		t.Fatal(err)
	}
	a := &rawAgent{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			a.mu.Lock()
			a.streams++
			a.mu.Unlock()
			wg.Go(func() {
				defer st.Close()
				serve(st)
			})
		}
	})
	t.Cleanup(func() {
		sess.Close()
		ws.CloseNow()
		cancel()
		wg.Wait()
	})
	return a
}

// get sends a GET for host through n, with trace, and returns the status
// and body.
func getVia(t *testing.T, n *servertest.Node, ctx context.Context, method, host string) (int, string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, method, n.URL+"/x", nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestPlainRequestsShareOneStream: requests without a body go one after
// another on one stream (kept between them, also after a HEAD, whose
// answer has no body to read), the agent sees them as a reverse proxy
// sends them, and an informational answer reaches the user before the
// final one.
func TestPlainRequestsShareOneStream(t *testing.T) {
	n := startNode(t, nil)
	seen := make(chan *http.Request, 16)
	a := dialRawAgent(t, n, "plain", func(st *yamux.Stream) {
		br := bufio.NewReader(st)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			seen <- req
			switch req.Method {
			case http.MethodHead:
				io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
			case http.MethodOptions:
				io.WriteString(st, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
					"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nopt\r\n0\r\n\r\n")
			default:
				io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	})
	host := "plain." + domain
	for _, method := range []string{"GET", "HEAD", "GET", "TRACE"} {
		status, body, err := getVia(t, n, context.Background(), method, host)
		want := "ok"
		if method == "HEAD" {
			want = ""
		}
		if err != nil || status != 200 || body != want {
			t.Fatalf("%s: %d %q %v", method, status, body, err)
		}
		req := <-seen
		if req.Method != method || req.URL.Path != "/x" || req.Host != host || req.Header.Get("X-Forwarded-For") != "127.0.0.1" || req.ContentLength != 0 {
			t.Fatalf("%s: the agent saw %s %s Host %q %v", method, req.Method, req.URL, req.Host, req.Header)
		}
	}
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, h.Get("Link"))
		return nil
	}}
	status, body, err := getVia(t, n, httptrace.WithClientTrace(context.Background(), trace), "OPTIONS", host)
	<-seen
	if err != nil || status != 200 || body != "opt" || len(hints) != 1 || hints[0] != "</a.css>; rel=preload" {
		t.Fatalf("OPTIONS: %d %q %v, hints %q", status, body, err, hints)
	}
	if got := a.count(); got != 1 {
		t.Fatalf("the agent got %d streams for five requests one after another, want 1", got)
	}
}

// TestStreamsTheAgentClosedAreLeft: an agent that closes a stream after
// its answer (as one stopping does with its idle streams) gets its end
// closed by the server too, without another request on it (an agent that
// waits for that before it stops would otherwise wait for ever), and a
// request that meets such a stream before the server noticed is sent
// again on a new one.
func TestStreamsTheAgentClosedAreLeft(t *testing.T) {
	n := startNode(t, nil)
	closedBack := make(chan error, 16)
	a := dialRawAgent(t, n, "closer", func(st *yamux.Stream) {
		br := bufio.NewReader(st)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		st.Close()
		// A request may still come before the server saw the close:
		// it is sent again elsewhere.
		_, err := io.Copy(io.Discard, br)
		closedBack <- err
	})
	host := "closer." + domain
	for i := range 2 {
		if status, body, err := getVia(t, n, context.Background(), "GET", host); err != nil || status != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q %v", i, status, body, err)
		}
	}
	if got := a.count(); got != 2 {
		t.Fatalf("the agent got %d streams, want 2", got)
	}
	for range 2 {
		select {
		case err := <-closedBack:
			if err != nil {
				t.Fatalf("the agent's read after its close: %v, want EOF", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not close a stream the agent closed")
		}
	}
}

// TestUserGoingAwayEndsTheStream: a user who goes away in the middle of
// an answer ends its stream at once (the agent sees its end closed), and
// the next request gets a stream of its own.
func TestUserGoingAwayEndsTheStream(t *testing.T) {
	n := startNode(t, nil)
	ended := make(chan struct{}, 1)
	started := make(chan struct{}, 1)
	a := dialRawAgent(t, n, "slow", func(st *yamux.Stream) {
		br := bufio.NewReader(st)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Query().Get("slow") == "" {
				io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				continue
			}
			io.WriteString(st, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
			started <- struct{}{}
			io.Copy(io.Discard, br)
			ended <- struct{}{}
			return
		}
	})
	host := "slow." + domain
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", n.URL+"/x?slow=1", nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	b := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, b); err != nil || string(b) != "first" {
		t.Fatalf("first chunk: %q %v", b, err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream of a request whose user went away stayed open")
	}
	if status, body, err := getVia(t, n, context.Background(), "GET", host); err != nil || status != 200 || body != "ok" {
		t.Fatalf("next request: %d %q %v", status, body, err)
	}
	if got := a.count(); got != 2 {
		t.Fatalf("the agent got %d streams, want 2 (a stream cut is not used again)", got)
	}
}
