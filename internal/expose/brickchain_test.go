package expose_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/expose/brickchain"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(redistest.Main(m), goleak.Cleanup(func(code int) {
		if buildDir != "" {
			os.RemoveAll(buildDir)
		}
		os.Exit(code)
	}))
}

const domain = "expose.test"

// node starts a postern node with the expose domain and opts applied.
func startNode(t *testing.T, tweak func(c *node.Config)) *servertest.Node {
	t.Helper()
	cfg := servertest.Config()
	cfg.Expose.Domain = domain
	if tweak != nil {
		tweak(&cfg)
	}
	return servertest.Start(t, cfg)
}

// agent is a brickchain agent written for the tests, as the original
// client behaves: it mints its own mandate tokens with go-jose.
type agent struct {
	t      *testing.T
	ws     *websocket.Conn
	key    *ecdsa.PrivateKey
	frames chan []byte
	done   chan error
	cancel context.CancelFunc
}

func dialAgent(t *testing.T, n *servertest.Node) *agent {
	t.Helper()
	return dialAgentWith(t, n, nil)
}

// dialAgentWith dials with hdr on the handshake (a token, under a policy).
func dialAgentWith(t *testing.T, n *servertest.Node, hdr http.Header) *agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(n.URL, "http")+"/proxy/subscribe", &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		cancel()
		t.Fatalf("dial subscribe: %v", err)
	}
	ws.SetReadLimit(-1)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a := &agent{t: t, ws: ws, key: key, frames: make(chan []byte, 256), done: make(chan error, 1), cancel: cancel}
	go func() {
		for {
			_, b, err := ws.Read(ctx)
			if err != nil {
				close(a.frames)
				a.done <- err
				return
			}
			a.frames <- b
		}
	}()
	t.Cleanup(a.close)
	return a
}

func (a *agent) close() {
	a.ws.CloseNow()
	a.cancel()
	for range a.frames {
	}
}

// token mints a mandate token for uri, timestamped ts, living ttl seconds.
func (a *agent) token(ts time.Time, uri string, ttl int) string {
	return mintToken(a.t, a.key, ts, uri, ttl)
}

func mintToken(t testing.TB, key *ecdsa.PrivateKey, ts time.Time, uri string, ttl int) string {
	payload, _ := json.Marshal(map[string]any{
		"@type": brickchain.MandateTokenType, "@timestamp": ts.UTC().Format(time.RFC3339Nano),
		"uri": uri, "ttl": ttl, "mandates": []string{},
	})
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, &jose.SignerOptions{EmbedJWK: true})
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := jws.CompactSerialize()
	return s
}

func (a *agent) send(v any) {
	a.t.Helper()
	b, _ := json.Marshal(v)
	if err := a.ws.Write(context.Background(), websocket.MessageText, b); err != nil {
		a.t.Fatalf("agent write: %v", err)
	}
}

// next returns the next frame that is not a ping.
func (a *agent) next() (brickchain.Frame, []byte) {
	a.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case b, ok := <-a.frames:
			if !ok {
				a.t.Fatalf("agent socket closed: %v", <-a.done)
			}
			f, err := brickchain.Decode(b)
			if err != nil {
				a.t.Fatalf("server sent an undecodable frame %q: %v", b, err)
			}
			if f.Type == brickchain.TypePing {
				continue
			}
			return f, b
		case <-timeout:
			a.t.Fatal("no frame from the server within 10s")
		}
	}
}

// closed waits for the server to close the socket and returns the status.
func (a *agent) closed() websocket.StatusCode {
	a.t.Helper()
	for range a.frames {
	}
	return websocket.CloseStatus(<-a.done)
}

// register registers with a fresh token for the node and returns the id.
func (a *agent) register(n *servertest.Node, session string) string {
	a.t.Helper()
	a.send(brickchain.RegistrationRequest{
		Base:         brickchain.NewBase(brickchain.TypeRegistrationRequest, "reg-"+session),
		MandateToken: a.token(time.Now(), n.URL, 60),
		Session:      session,
	})
	f, _ := a.next()
	if f.Type != brickchain.TypeRegistrationResponse || f.ID != "reg-"+session {
		a.t.Fatalf("registration answer %+v", f)
	}
	return f.KeyID
}

// thumbID is the client id of key computed by hand (RFC 7638).
func thumbID(k *ecdsa.PublicKey) string {
	enc := base64.RawURLEncoding
	x, y := make([]byte, 32), make([]byte, 32)
	k.X.FillBytes(x)
	k.Y.FillBytes(y)
	sum := sha256.Sum256([]byte(`{"crv":"P-256","kty":"EC","x":"` + enc.EncodeToString(x) + `","y":"` + enc.EncodeToString(y) + `"}`))
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))
}

// do sends a request to the node with Host set.
func do(t *testing.T, n *servertest.Node, method, host, path string, body io.Reader, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, n.URL+path, body)
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestBrickchainRegistration(t *testing.T) {
	n := startNode(t, nil)
	a := dialAgent(t, n)
	a.send(brickchain.RegistrationRequest{Base: brickchain.NewBase(brickchain.TypeRegistrationRequest, "r1"), MandateToken: a.token(time.Now(), n.URL+"/", 60)})
	f, raw := a.next()
	want := thumbID(&a.key.PublicKey)
	if f.Type != brickchain.TypeRegistrationResponse || f.ID != "r1" || f.KeyID != want || f.Hostname != want+"."+domain {
		t.Fatalf("registration-response %s, want keyID %s", raw, want)
	}
	var m map[string]any
	json.Unmarshal(raw, &m)
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(m["@timestamp"])); err != nil {
		t.Fatalf("@timestamp: %s", raw)
	}
	// One socket holds several ids: a session claims SHA-256(id + session).
	sid := a.register(n, "kitchen")
	sum := sha256.Sum256([]byte(want + "kitchen"))
	if wantS := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])); sid != wantS {
		t.Fatalf("session id %s, want %s", sid, wantS)
	}
	for _, id := range []string{want, sid} {
		go func() {
			f, _ := a.next()
			a.send(brickchain.HTTPResponse{Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 200, Body: base64.StdEncoding.EncodeToString([]byte(f.URL))})
		}()
		if resp, body := do(t, n, "GET", id+"."+domain, "/who", nil); resp.StatusCode != 200 || body != "/who" {
			t.Fatalf("%s: %d %q", id, resp.StatusCode, body)
		}
	}
}

func TestBrickchainRegistrationRefused(t *testing.T) {
	n := startNode(t, nil)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cases := []struct {
		name  string
		token func(a *agent) string
		want  string
	}{
		{"expired", func(a *agent) string { return a.token(time.Now().Add(-2*time.Minute), n.URL, 60) }, "expired"},
		{"wrong uri", func(a *agent) string { return a.token(time.Now(), "http://elsewhere.example", 60) }, "not for this endpoint"},
		{"bad signature", func(a *agent) string {
			p := strings.Split(a.token(time.Now(), n.URL, 60), ".")
			q := strings.Split(mintToken(t, other, time.Now(), n.URL, 60), ".")
			return p[0] + "." + p[1] + "." + q[2]
		}, "signature"},
		{"garbage", func(a *agent) string { return "not-a-token" }, "compact JWS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := dialAgent(t, n)
			a.send(brickchain.RegistrationRequest{Base: brickchain.NewBase(brickchain.TypeRegistrationRequest, "rq"), MandateToken: c.token(a)})
			f, raw := a.next()
			if f.Type != brickchain.TypeError || f.ID != "rq" || !strings.Contains(f.Error, c.want) {
				t.Fatalf("error frame %s, want %q", raw, c.want)
			}
			if code := a.closed(); code != websocket.StatusPolicyViolation {
				t.Fatalf("close status %v, want policy violation", code)
			}
		})
	}
	// The refused agent's id is unknown to users: 502.
	a := dialAgent(t, n)
	id := thumbID(&a.key.PublicKey)
	if resp, body := do(t, n, "GET", id+"."+domain, "/", nil); resp.StatusCode != 502 || !strings.Contains(body, id) {
		t.Fatalf("unregistered id: %d %q", resp.StatusCode, body)
	}
}

func TestBrickchainUnregisteredSocketClosedAndPings(t *testing.T) {
	n := startNode(t, func(c *node.Config) {
		// Long enough for a registration on a loaded machine (dial,
		// sign, register under -race); short enough to wait for.
		c.Expose.Brickchain.RegisterTimeout = time.Second
		c.Expose.Brickchain.PingInterval = 50 * time.Millisecond
		c.Expose.Brickchain.RegistrationTTL = 5 * time.Second
	})
	a := dialAgent(t, n)
	f, _ := a.next()
	if f.Type != brickchain.TypeError || !strings.Contains(f.Error, "not registered") {
		t.Fatalf("frame %+v", f)
	}
	if code := a.closed(); code != websocket.StatusPolicyViolation {
		t.Fatalf("close %v", code)
	}
	// A registered agent gets the ping exactly as the original sent it,
	// and stays connected past the register timeout: 30 pings 50 ms
	// apart take 1.5 s at least.
	b := dialAgent(t, n)
	b.register(n, "")
	for seen := 0; seen < 30; {
		raw, ok := <-b.frames
		if !ok {
			t.Fatalf("registered agent disconnected: %v", <-b.done)
		}
		if string(raw) != string(brickchain.PingFrame) {
			t.Fatalf("frame %q, want the ping", raw)
		}
		seen++
	}
}

func TestBrickchainHTTP(t *testing.T) {
	n := startNode(t, nil)
	a := dialAgent(t, n)
	id := a.register(n, "")
	type got struct {
		f   brickchain.Frame
		raw []byte
	}
	frames := make(chan got, 1)
	go func() {
		f, raw := a.next()
		frames <- got{f, raw}
		a.send(brickchain.HTTPResponse{
			Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 201,
			Headers:     map[string]string{"X-Agent": "yes", "Content-Length": "999", "Bad\r\nName": "x", "X-Split": "a\r\nInjected: 1"},
			ContentType: "application/json", Body: base64.StdEncoding.EncodeToString([]byte(`{"ok":true}`)),
		})
	}()
	resp, body := do(t, n, "PATCH", strings.ToUpper(id)+"."+domain+":8443", "/api/items?x=1&y=2", strings.NewReader("payload"),
		"X-Multi", "first", "X-Multi", "second")
	g := <-frames
	var m map[string]any
	json.Unmarshal(g.raw, &m)
	if g.f.Type != brickchain.TypeHTTPRequest || g.f.URL != "/api/items" || g.f.Query != "x=1&y=2" || g.f.Method != "PATCH" ||
		g.f.Headers["X-Multi"] != "first" || m["body"] != base64.StdEncoding.EncodeToString([]byte("payload")) {
		t.Fatalf("http-request %s", g.raw)
	}
	if resp.StatusCode != 201 || body != `{"ok":true}` || resp.Header.Get("X-Agent") != "yes" ||
		resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Injected") != "" || resp.Header.Get("X-Split") != "" {
		t.Fatalf("response %d %q %v", resp.StatusCode, body, resp.Header)
	}
	// The path route reaches the same agent; an empty query is omitted.
	go func() {
		f, raw := a.next()
		frames <- got{f, raw}
		a.send(brickchain.HTTPResponse{Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 200})
	}()
	resp, _ = do(t, n, "GET", "", "/proxy/request/"+id+"/deep/path", nil)
	g = <-frames
	if resp.StatusCode != 200 || g.f.URL != "/deep/path" || strings.Contains(string(g.raw), `"query"`) {
		t.Fatalf("path route: %d %s", resp.StatusCode, g.raw)
	}
	// Unknown clients get 502 with a message; GET / on the bare domain the version.
	if resp, body := do(t, n, "GET", "", "/proxy/request/"+strings.Repeat("a", 52)+"/", nil); resp.StatusCode != 502 || !strings.Contains(body, "no agent") {
		t.Fatalf("unknown client: %d %q", resp.StatusCode, body)
	}
	if resp, body := do(t, n, "GET", domain, "/", nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "postern/") {
		t.Fatalf("version: %d %q", resp.StatusCode, body)
	}
	// Other hosts keep postern's own routes.
	if resp, _ := do(t, n, "GET", "elsewhere.example", "/healthz", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz on another host: %d", resp.StatusCode)
	}
}

func TestBrickchainTimeoutsAndLimits(t *testing.T) {
	n := startNode(t, func(c *node.Config) {
		c.Expose.Brickchain.ResponseTimeout = 300 * time.Millisecond
		c.Expose.Brickchain.MaxRequestBytes = 1000
		c.Expose.Brickchain.MaxFrameBytes = 4000
		c.Expose.Brickchain.ClientRate = 5
		c.Expose.Brickchain.ClientRatePeriod = time.Hour
	})
	a := dialAgent(t, n)
	id := a.register(n, "")
	host := id + "." + domain

	// No answer: 504 "timeout" (1).
	if resp, body := do(t, n, "GET", host, "/slow", nil); resp.StatusCode != 504 || body != "timeout" {
		t.Fatalf("timeout: %d %q", resp.StatusCode, body)
	}
	a.next() // the unanswered request
	// Too large a request body: 413, nothing sent to the agent (2).
	if resp, _ := do(t, n, "POST", host, "/up", strings.NewReader(strings.Repeat("x", 1001))); resp.StatusCode != 413 {
		t.Fatalf("large body: %d", resp.StatusCode)
	}
	// An answer over the frame limit: 502 at once, well before the timeout (3).
	go func() {
		f, _ := a.next()
		a.send(brickchain.HTTPResponse{Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 200, Body: base64.StdEncoding.EncodeToString(make([]byte, 8000))})
	}()
	start := time.Now()
	resp, body := do(t, n, "GET", host, "/big", nil)
	if resp.StatusCode != 502 || !strings.Contains(body, "larger than 4000") || time.Since(start) > 250*time.Millisecond {
		t.Fatalf("large answer: %d %q after %v", resp.StatusCode, body, time.Since(start))
	}
	// The agent is still usable (4).
	go func() {
		f, _ := a.next()
		a.send(brickchain.HTTPResponse{Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 204})
	}()
	if resp, _ := do(t, n, "GET", host, "/ok", nil); resp.StatusCode != 204 {
		t.Fatalf("after the large answer: %d", resp.StatusCode)
	}
	// An agent that goes away with a request pending: 502 at once (5).
	go func() {
		a.next()
		a.ws.Close(websocket.StatusNormalClosure, "")
	}()
	if resp, body := do(t, n, "GET", host, "/gone", nil); resp.StatusCode != 502 || !strings.Contains(body, "disconnected") {
		t.Fatalf("agent gone: %d %q", resp.StatusCode, body)
	}
	// The sixth request in the period: 429.
	if resp, body := do(t, n, "GET", host, "/", nil); resp.StatusCode != 429 || body != "Too many requests" {
		t.Fatalf("rate limit: %d %q", resp.StatusCode, body)
	}
}

// wsDial opens a user websocket to host on the node.
func wsDial(ctx context.Context, n *servertest.Node, host, path string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	dialer := &net.Dialer{}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, "tcp", n.Addr)
	}}}
	return websocket.Dial(ctx, "ws://"+host+path, &websocket.DialOptions{HTTPClient: hc, HTTPHeader: hdr})
}

func TestBrickchainWebsocket(t *testing.T) {
	n := startNode(t, nil)
	a := dialAgent(t, n)
	id := a.register(n, "")
	host := id + "." + domain
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The user's upgrade completes only after the agent's ws-response.
	type dialed struct {
		c   *websocket.Conn
		err error
	}
	dc := make(chan dialed, 1)
	go func() {
		c, _, err := wsDial(ctx, n, host, "/socket?room=1", http.Header{"X-User": {"u1"}})
		dc <- dialed{c, err}
	}()
	req, raw := a.next()
	if req.Type != brickchain.TypeWSRequest || req.URL != "/socket" || req.Query != "room=1" || req.Headers["X-User"] != "u1" {
		t.Fatalf("ws-request %s", raw)
	}
	for k := range req.Headers {
		if k == "Connection" || k == "Upgrade" || strings.HasPrefix(k, "Sec-Websocket-K") || strings.HasPrefix(k, "Sec-Websocket-V") {
			t.Fatalf("ws-request carries %s: %s", k, raw)
		}
	}
	select {
	case d := <-dc:
		t.Fatalf("upgrade completed before ws-response: %v", d.err)
	default:
	}
	a.send(brickchain.WSResponse{Base: brickchain.NewBase(brickchain.TypeWSResponse, req.ID), OK: true})
	d := <-dc
	if d.err != nil {
		t.Fatalf("user dial: %v", d.err)
	}
	uc := d.c
	defer uc.CloseNow()

	// User to agent, text and binary.
	uc.Write(ctx, websocket.MessageText, []byte("hello agent"))
	uc.Write(ctx, websocket.MessageBinary, []byte("bin\x01"))
	for _, want := range []struct {
		typ  int
		body string
	}{{1, "hello agent"}, {2, "bin\x01"}} {
		f, raw := a.next()
		if f.Type != brickchain.TypeWSMessage || f.ID != req.ID || f.MessageType != want.typ || f.Body != want.body {
			t.Fatalf("ws-message %s, want %+v", raw, want)
		}
	}
	// Agent to user.
	a.send(brickchain.WSMessage{Base: brickchain.NewBase(brickchain.TypeWSMessage, req.ID), MessageType: 1, Body: "hello user"})
	a.send(brickchain.WSMessage{Base: brickchain.NewBase(brickchain.TypeWSMessage, req.ID), MessageType: 2, Body: "\x00\x02"})
	for _, want := range []struct {
		typ  websocket.MessageType
		body string
	}{{websocket.MessageText, "hello user"}, {websocket.MessageBinary, "\x00\x02"}} {
		typ, b, err := uc.Read(ctx)
		if err != nil || typ != want.typ || string(b) != want.body {
			t.Fatalf("user read %v %q %v, want %+v", typ, b, err, want)
		}
	}
	// The agent tears down: the user's socket closes normally.
	a.send(brickchain.WSTeardown{Base: brickchain.NewBase(brickchain.TypeWSTeardown, req.ID)})
	if _, _, err := uc.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("after teardown: %v", err)
	}

	// A second socket, closed by the user: the agent gets ws-teardown.
	go func() {
		c, _, err := wsDial(ctx, n, host, "/again", nil)
		dc <- dialed{c, err}
	}()
	req, _ = a.next()
	a.send(brickchain.WSResponse{Base: brickchain.NewBase(brickchain.TypeWSResponse, req.ID), OK: true})
	d = <-dc
	if d.err != nil {
		t.Fatal(d.err)
	}
	d.c.Close(websocket.StatusNormalClosure, "bye")
	if f, raw := a.next(); f.Type != brickchain.TypeWSTeardown || f.ID != req.ID {
		t.Fatalf("want ws-teardown, got %s", raw)
	}

	// A refusal becomes 502 with the agent's error.
	go func() {
		_, resp, err := wsDial(ctx, n, host, "/refused", nil)
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			err = fmt.Errorf("%d %s", resp.StatusCode, b)
		}
		dc <- dialed{nil, err}
	}()
	req, _ = a.next()
	a.send(brickchain.WSResponse{Base: brickchain.NewBase(brickchain.TypeWSResponse, req.ID), OK: false, Error: "no such room"})
	if d := <-dc; d.err == nil || !strings.Contains(d.err.Error(), "502") || !strings.Contains(d.err.Error(), "no such room") {
		t.Fatalf("refusal: %v", d.err)
	}
}

// TestBrickchainConnectionTokenList sends the upgrade as browsers do,
// "Connection: keep-alive, Upgrade", which the original served as plain
// HTTP.
func TestBrickchainConnectionTokenList(t *testing.T) {
	n := startNode(t, nil)
	a := dialAgent(t, n)
	id := a.register(n, "")
	conn, err := net.Dial("tcp", n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /chat HTTP/1.1\r\nHost: %s.%s\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", id, domain)
	req, raw := a.next()
	if req.Type != brickchain.TypeWSRequest {
		t.Fatalf("want ws-request, got %s", raw)
	}
	a.send(brickchain.WSResponse{Base: brickchain.NewBase(brickchain.TypeWSResponse, req.ID), OK: true})
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Sec-Websocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("upgrade answer %v %v", resp, err)
	}
}

func TestBrickchainSlowUserDropped(t *testing.T) {
	n := startNode(t, func(c *node.Config) { c.Expose.Brickchain.WSBufferBytes = 64 << 10 })
	a := dialAgent(t, n)
	id := a.register(n, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan *websocket.Conn, 1)
	go func() {
		c, _, err := wsDial(ctx, n, id+"."+domain, "/flood", nil)
		if err != nil {
			t.Error(err)
		}
		done <- c
	}()
	req, _ := a.next()
	a.send(brickchain.WSResponse{Base: brickchain.NewBase(brickchain.TypeWSResponse, req.ID), OK: true})
	uc := <-done
	if uc == nil {
		return
	}
	defer uc.CloseNow()
	// The user reads nothing while the agent floods: once the kernel
	// buffers and the stream's queue are full the user is cut off and the
	// agent told, instead of the server buffering without bound.
	body := strings.Repeat("x", 32<<10)
	for i := 0; ; i++ {
		select {
		case raw, ok := <-a.frames:
			if !ok {
				t.Fatal("agent socket closed")
			}
			f, _ := brickchain.Decode(raw)
			if f.Type == brickchain.TypeWSTeardown && f.ID == req.ID {
				return
			}
			continue
		default:
		}
		if i > 100_000 {
			t.Fatal("the slow user was never dropped")
		}
		a.send(brickchain.WSMessage{Base: brickchain.NewBase(brickchain.TypeWSMessage, req.ID), MessageType: 1, Body: body})
	}
}
