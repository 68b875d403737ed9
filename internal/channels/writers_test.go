package channels_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/internal/channels"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// TestOwnWriters runs the writing behaviours with every session on a
// writer goroutine of its own, the path of TLS connections (which cannot
// be written to without waiting) and of subscribers whose socket is full.
func TestOwnWriters(t *testing.T) {
	runWith(t, channels.UseOwnWriters, map[string]func(*testing.T){
		"no lost wake-up": TestWritersNeverLoseAWakeup,
		"slow dropped":    TestSlowSubscriberDropped,
		"flooder cut off": TestFloodingPublisherIsCutOff,
		"write deadline":  TestWriteDeadline,
		"resume":          TestResumeWithSince,
		"websocket":       TestWebsocketPublish,
		"frame sizes":     TestFrameSizes,
		"control frames":  TestControlFramesBetweenMessages,
		"after close":     TestNothingAfterClose,
		"ping pong":       TestPingPong,
		"control pieces":  TestControlFramesInPieces,
		"shutdown":        TestShutdownClosesSubscribers,
		"writers let go":  TestWritersLetGo,
		"together":        TestQueuedFramesGoTogether,
	})
}

// runWith runs each test with the setting use makes (undone after it).
func runWith(t *testing.T, use func() (restore func()), tests map[string]func(*testing.T)) {
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			t.Cleanup(use())
			test(t)
		})
	}
}

// TestPoolWriteCalls runs the pool's behaviours with one write(2) per
// frame, the path where the kernel has no io_uring (elsewhere than on
// Linux, or where it is forbidden); the other tests take the io_uring
// path where the kernel has it.
func TestPoolWriteCalls(t *testing.T) {
	runWith(t, channels.UseWriteCalls, map[string]func(*testing.T){
		"no lost wake-up": TestWritersNeverLoseAWakeup,
		"slow dropped":    TestSlowSubscriberDropped,
		"flooder cut off": TestFloodingPublisherIsCutOff,
		"websocket":       TestWebsocketPublish,
		"frame sizes":     TestFrameSizes,
		"control frames":  TestControlFramesBetweenMessages,
		"after close":     TestNothingAfterClose,
		"churn":           TestFanoutWhileConnectionsChurn,
		"together":        TestQueuedFramesGoTogether,
		"shutdown":        TestShutdownClosesSubscribers,
	})
}

// TestFanoutWhileConnectionsChurn: while a channel's subscribers come and
// go as fast as they can, every message reaches every subscriber that
// stays, in order, and none reaches a connection of another channel. A
// closed connection's descriptor number is soon given to a new one; the
// pool holds each descriptor from the time it picks its number until the
// kernel took the write, so a frame can never go to the number's next
// owner. (The race this guards against is narrow: passing does not prove
// the hold, failing proves it broken.)
func TestFanoutWhileConnectionsChurn(t *testing.T) {
	e := start(t, nil)
	const stay, churners, msgs = 20, 4, 100
	steady := make([]*websocket.Conn, stay)
	for i := range steady {
		steady[i] = e.dial("/c/churn", "/churn")
	}
	e.node.WaitForSubscribers(t, "/churn", stay)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url := "ws" + strings.TrimPrefix(e.node.URL, "http")
	errs := make(chan error, stay+2*churners)
	var wg, churn sync.WaitGroup
	for i, c := range steady {
		wg.Go(func() {
			for j := range msgs {
				rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
				_, b, err := c.Read(rctx)
				rcancel()
				if err != nil || string(b) != strconv.Itoa(j) {
					errs <- fmt.Errorf("steady subscriber %d, message %d: %q %v", i, j, b, err)
					return
				}
			}
		})
	}
	// Churners: one subscribes to the busy channel and leaves at once,
	// the other to a quiet channel that must stay silent.
	for i := range churners {
		churn.Go(func() {
			for ctx.Err() == nil {
				c, _, err := websocket.Dial(ctx, url+"/c/churn", nil)
				if err != nil {
					return // the test is over
				}
				c.CloseNow()
			}
		})
		churn.Go(func() {
			for ctx.Err() == nil {
				c, _, err := websocket.Dial(ctx, url+"/c/quiet"+strconv.Itoa(i), nil)
				if err != nil {
					return
				}
				// An empty message comes back to its sender only: the
				// first frame it reads must be that answer.
				err = c.Write(ctx, websocket.MessageText, nil)
				var b []byte
				if err == nil {
					_, b, err = c.Read(ctx)
				}
				c.CloseNow()
				if err == nil && len(b) > 0 {
					errs <- fmt.Errorf("a subscriber of a quiet channel got %q", b)
					return
				}
			}
		})
	}
	for j := range msgs {
		e.post("/c/churn", strconv.Itoa(j))
	}
	wg.Wait()
	cancel()
	churn.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestQueuedFramesGoTogether: messages queued for a subscriber faster
// than it reads go out several to a write (up to 32 KiB), and arrive
// whole and in order, also when the socket takes only part of such a
// write and the rest follows from the session's own writer.
func TestQueuedFramesGoTogether(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Channels.MaxMessageBytes = 70000
		c.Channels.MaxPostBytes = 70000
	})
	reader := e.sub("/burst", 1, "")
	publisher := e.sub("/burst", 2, "")
	const msgs = 200
	sizes := []int{1, 10, 125, 126, 1000, 5000, 40000, 70000}
	body := func(i int) string { return strings.Repeat(string(rune('a'+i%26)), sizes[i%len(sizes)]) }
	done := make(chan error, 1)
	go func() {
		for i := range msgs {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			_, b, err := reader.Read(ctx)
			cancel()
			if err != nil || string(b) != body(i) {
				done <- fmt.Errorf("message %d: %d bytes %v, want %d bytes", i, len(b), err, sizes[i%len(sizes)])
				return
			}
		}
		done <- nil
	}()
	// The publisher is a subscriber too, which reads its own messages
	// only at the end (its queue holds them all).
	for i := range msgs {
		write(t, publisher, websocket.MessageText, body(i))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i := range msgs {
		if got := readText(t, publisher); got != body(i) {
			t.Fatalf("publisher's own message %d: %d bytes", i, len(got))
		}
	}
}

// TestFrameSizes: messages on both sides of the websocket length
// encodings (7-bit, 16-bit, 64-bit) reach plain and envelope subscribers
// intact; postern frames them itself, once per message.
func TestFrameSizes(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Channels.MaxPostBytes = 70000
		c.Channels.MaxMessageBytes = 70000
	})
	plain := e.sub("/sizes", 1, "")
	env := e.sub("/sizes", 2, "?since=now")
	for _, n := range []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 70000} {
		msg := strings.Repeat(strconv.Itoa(n%10), n)
		if n == 0 {
			// An empty message is a keep-alive: it goes back to its
			// sender only (here: plain).
			write(t, plain, websocket.MessageText, "")
			if got := readText(t, plain); got != "" {
				t.Fatalf("keep-alive answer %q", got)
			}
			continue
		}
		e.post("/c/sizes", msg)
		if got := readText(t, plain); got != msg {
			t.Fatalf("%d bytes: plain subscriber got %d bytes", n, len(got))
		}
		if f := readFrame(t, env); f.Data != msg || f.ID == "" {
			t.Fatalf("%d bytes: envelope subscriber got %d bytes, id %q", n, len(f.Data), f.ID)
		}
	}
	bin := []byte{0, 0xff, 0x80}
	write(t, env, websocket.MessageBinary, string(bin))
	if typ, got := read(t, plain); typ != websocket.MessageBinary || got != string(bin) {
		t.Fatalf("binary: %v %q", typ, got)
	}
	if f := readFrame(t, env); !f.Binary || f.Data != "AP+A" {
		t.Fatalf("binary envelope %+v", f)
	}
}

// TestControlFramesBetweenMessages: pings from both sides (and their
// pongs) go out while many messages are written to the same connections;
// every frame arrives whole: the pings are answered and every message
// arrives intact and in order.
func TestControlFramesBetweenMessages(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Channels.PingInterval = 5 * time.Millisecond
		c.Channels.PongTimeout = 5 * time.Second
	})
	const subs, msgs = 20, 100
	conns := make([]*websocket.Conn, subs)
	for i := range conns {
		conns[i] = e.dial("/c/ctl", "/ctl")
	}
	e.node.WaitForSubscribers(t, "/ctl", subs)
	payload := strings.Repeat("p", 3000) // several frames fill a socket buffer
	var checked, readers sync.WaitGroup
	errs := make(chan error, 2*subs)
	for i, c := range conns {
		got := make(chan struct{})
		readers.Go(func() {
			defer func() {
				// Keep reading, so that pongs in flight are read, until
				// the connection closes at the end of the test.
				for {
					if _, _, err := c.Read(context.Background()); err != nil {
						return
					}
				}
			}()
			defer close(got)
			for j := range msgs {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, b, err := c.Read(ctx)
				cancel()
				if want := strconv.Itoa(j) + payload; err != nil || string(b) != want {
					errs <- fmt.Errorf("subscriber %d message %d: %d bytes, %v", i, j, len(b), err)
					return
				}
			}
		})
		checked.Go(func() {
			// The client's pings, answered by pongs that the server's
			// reader writes while messages go out.
			for {
				select {
				case <-got:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := c.Ping(ctx)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("subscriber %d ping: %v", i, err)
					return
				}
			}
		})
	}
	for j := range msgs {
		e.post("/c/ctl", strconv.Itoa(j)+payload)
	}
	checked.Wait()
	if v := metric(t, e.node, "postern_channels_closed_total"); v != 0 {
		t.Errorf("closed_total %v: a subscriber was cut off", v)
	}
	for _, c := range conns {
		c.CloseNow()
	}
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestNothingAfterClose: once the server has sent a close frame, no
// message frame follows it on the wire while it waits for the client's
// close, however many are published meanwhile.
func TestNothingAfterClose(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Channels.BroadcastOnly = []string{"/after"} })
	nc, br := rawWebsocket(t, e.node.Addr, "/c/after")
	e.node.WaitForSubscribers(t, "/after", 1)
	stop := make(chan struct{})
	var posts sync.WaitGroup
	posts.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("POST", e.node.URL+"/c/after", strings.NewReader("m"))
			if res, err := e.c.Do(req); err == nil {
				res.Body.Close()
			}
		}
	})
	defer func() { close(stop); posts.Wait() }()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for range 10 {
		if _, err := readRawFrame(br); err != nil {
			t.Fatal(err)
		}
	}
	// Publishing on a broadcast-only channel: the server closes with
	// 1008 (a masked text frame "x", key 0).
	nc.Write([]byte{0x81, 0x81, 0, 0, 0, 0, 'x'})
	for {
		op, err := readRawFrame(br)
		if err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		if op == 0x8 {
			break
		}
	}
	// The server waits for the client's close; messages keep coming
	// meanwhile, and none may follow the close frame.
	nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("a frame (first byte %#x) followed the close frame", b)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("connection ended before the client's close: %v", err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	nc.Write([]byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xf0}) // close 1008
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("a frame (first byte %#x) followed the close handshake", b)
	}
	e.node.WaitForSubscribers(t, "/after", 0)
}

// readRawFrame reads one unmasked server frame and returns its opcode.
func readRawFrame(br *bufio.Reader) (byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			return 0, err
		}
		n = int(ext[0])<<8 | int(ext[1])
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			return 0, err
		}
		n = 0
		for _, b := range ext {
			n = n<<8 | int(b)
		}
	}
	if _, err := br.Discard(n); err != nil {
		return 0, err
	}
	return h[0] & 0x0f, nil
}

// rawWebsocket opens a websocket to path at addr by hand, with no client
// library behind it: the test reads (or does not read) the frames itself.
// The connection closes when the test ends.
func rawWebsocket(t *testing.T, addr, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path)
	br := bufio.NewReader(nc)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", res, err)
	}
	return nc, br
}

// readRawMessage reads one unmasked server frame of at most 125 bytes
// and returns its opcode and payload.
func readRawMessage(t *testing.T, br *bufio.Reader) (byte, string) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatal(err)
	}
	if h[1] > 125 {
		t.Fatalf("frame header %x: longer than expected", h)
	}
	p := make([]byte, h[1])
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	return h[0] & 0x0f, string(p)
}

// maskedFrame is a client frame: first byte b0, payload masked with key.
func maskedFrame(b0 byte, key [4]byte, payload string) []byte {
	f := append([]byte{b0, 0x80 | byte(len(payload))}, key[:]...)
	for i := range len(payload) {
		f = append(f, payload[i]^key[i%4])
	}
	return f
}

// TestControlFramesInPieces: the pings and pongs a client sends are
// taken whole however the bytes arrive: one byte at a time, or sharing a
// read with a data frame. A ping is answered with its payload, a pong
// keeps the connection alive (the server pings again instead of closing
// it), and a malformed control frame is refused with 1002.
func TestControlFramesInPieces(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Channels.PingInterval = 20 * time.Millisecond
		c.Channels.PongTimeout = 10 * time.Second
	})
	nc, br := rawWebsocket(t, e.node.Addr, "/c/pieces")
	e.node.WaitForSubscribers(t, "/pieces", 1)
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	// next returns the next frame that is not a ping from the server.
	next := func() (byte, string) {
		for {
			op, p := readRawMessage(t, br)
			if op != 0x9 {
				return op, p
			}
		}
	}

	// A ping, one byte per write.
	for _, b := range maskedFrame(0x89, [4]byte{1, 2, 3, 4}, "abc") {
		if _, err := nc.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	if op, p := next(); op != 0xa || p != "abc" {
		t.Fatalf("got opcode %#x %q, want the pong \"abc\"", op, p)
	}

	// A pong, a ping and a message in one write, then a message cut
	// inside its header.
	batch := maskedFrame(0x8a, [4]byte{9, 9, 9, 9}, "")
	batch = append(batch, maskedFrame(0x89, [4]byte{5, 6, 7, 8}, "p2")...)
	batch = append(batch, maskedFrame(0x81, [4]byte{1, 1, 1, 1}, "hello")...)
	msg := maskedFrame(0x81, [4]byte{7, 0, 7, 0}, "world")
	batch = append(batch, msg[:1]...)
	if _, err := nc.Write(batch); err != nil {
		t.Fatal(err)
	}
	if op, p := next(); op != 0xa || p != "p2" {
		t.Fatalf("got opcode %#x %q, want the pong \"p2\"", op, p)
	}
	if op, p := next(); op != 0x1 || p != "hello" {
		t.Fatalf("got opcode %#x %q, want the message \"hello\"", op, p)
	}
	if _, err := nc.Write(msg[1:]); err != nil {
		t.Fatal(err)
	}
	if op, p := next(); op != 0x1 || p != "world" {
		t.Fatalf("got opcode %#x %q, want the message \"world\"", op, p)
	}

	// The server's pings: each answered (in two writes) by a pong, and
	// each followed by the next ping rather than a close.
	for range 3 {
		op, p := readRawMessage(t, br)
		for op != 0x9 {
			op, p = readRawMessage(t, br)
		}
		if p != "" {
			t.Fatalf("server ping payload %q", p)
		}
		pong := maskedFrame(0x8a, [4]byte{3, 1, 4, 1}, "")
		nc.Write(pong[:3])
		nc.Write(pong[3:])
	}

	// A ping with an extension bit set is no ping postern takes:
	// coder/websocket refuses it.
	if _, err := nc.Write(maskedFrame(0xc9, [4]byte{}, "")); err != nil {
		t.Fatal(err)
	}
	op, p := next()
	if op != 0x8 || len(p) < 2 || int(p[0])<<8|int(p[1]) != 1002 {
		t.Fatalf("got opcode %#x %q, want a close with 1002", op, p)
	}
	e.node.WaitForSubscribers(t, "/pieces", 0)
}

// TestFramesSentWithTheHandshake: a client that sends frames before it
// has read the handshake's answer (in the same write as the request) has
// them read, small or larger than the read buffer; and a close the
// server starts from another goroutine (here: shutting down) reaches it.
func TestFramesSentWithTheHandshake(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	var brs []*bufio.Reader
	var ncs []net.Conn
	for i, size := range []int{5, 2000} {
		msg := strings.Repeat("e", size)
		nc, err := net.Dial("tcp", n.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(20 * time.Second))
		req := "GET /c/early HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
		frame := []byte{0x81, 0xfe, byte(size >> 8), byte(size), 0, 0, 0, 0}
		if size <= 125 {
			frame = []byte{0x81, 0x80 | byte(size), 0, 0, 0, 0}
		}
		// A ping and a message, both before the answer is read.
		early := append([]byte(req), maskedFrame(0x89, [4]byte{}, "hi")...)
		early = append(append(early, frame...), msg...)
		if _, err := nc.Write(early); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(nc)
		res, err := http.ReadResponse(br, nil)
		if err != nil || res.StatusCode != 101 {
			t.Fatalf("handshake: %v %v", res, err)
		}
		n.WaitForSubscribers(t, "/early", i+1)
		if op, p := readRawMessage(t, br); op != 0xa || p != "hi" {
			t.Fatalf("%d: got opcode %#x %q, want the pong", size, op, p)
		}
		// The sender gets its own message (and the first sender this
		// one's).
		for _, b := range append(brs, br) {
			if op, err := readRawFrame(b); err != nil || op != 0x1 {
				t.Fatalf("%d: got opcode %#x, %v, want the message", size, op, err)
			}
		}
		brs, ncs = append(brs, br), append(ncs, nc)
	}
	done := make(chan error, 1)
	go func() { done <- n.Shutdown(context.Background()) }()
	for i, br := range brs {
		op, p := readRawMessage(t, br)
		if op != 0x8 || len(p) < 2 || int(p[0])<<8|int(p[1]) != 1001 {
			t.Fatalf("got opcode %#x %q, want a close with 1001", op, p)
		}
		// The client's close ends the handshake.
		ncs[i].Write(maskedFrame(0x88, [4]byte{}, "\x03\xe9"))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPlainWritesSetsUpNoRing: --channels-plain-writes (Options.PlainWrites)
// is the operator's way around a kernel whose io_uring misbehaves: the
// node fans out as usual and never sets up a ring.
func TestPlainWritesSetsUpNoRing(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Channels.PlainWrites = true })
	before := channels.RingsMade()
	a := e.sub("/plain", 1, "")
	b := e.sub("/plain", 2, "")
	for i := range 3 {
		msg := fmt.Sprint("m", i)
		write(t, a, websocket.MessageText, msg)
		for _, c := range []*websocket.Conn{a, b} {
			if got := readText(t, c); got != msg {
				t.Fatalf("got %q, want %q", got, msg)
			}
		}
	}
	if made := channels.RingsMade() - before; made != 0 {
		t.Fatalf("%d io_uring rings set up with PlainWrites", made)
	}
}
