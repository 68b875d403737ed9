package splice_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/relay/splice"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns the two ends of a TCP connection on 127.0.0.1.
func pair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := ln.AcceptTCP()
		accepted <- c
	}()
	a, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// pattern is n bytes that show where each one belongs.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>16)
	}
	return b
}

// relayPair is a writer feeding src's peer, src and dst, and a reader
// reading dst's peer to its end.
type relayPair struct {
	in       *net.TCPConn // write here, it arrives on src
	src, dst *net.TCPConn
	out      chan []byte // all that dst's peer read, once dst closes
}

func newRelay(t *testing.T) *relayPair {
	in, src := pair(t)
	dst, sink := pair(t)
	r := &relayPair{in: in, src: src, dst: dst, out: make(chan []byte, 1)}
	go func() {
		b, _ := io.ReadAll(sink)
		r.out <- b
	}()
	return r
}

// Copy moves exactly n bytes, spliced, and leaves what follows them in
// src; the socket's read deadline bounds a silent src.
func TestCopyMovesExactlyN(t *testing.T) {
	r := newRelay(t)
	const n = 5<<20 + 4321
	body, tail := pattern(n), []byte("the fields after the body")
	go func() {
		r.in.Write(body)
		r.in.Write(tail)
	}()
	before := splice.Moved()
	k, err := splice.Copy(r.dst, r.src, n)
	if err != nil || k != n {
		t.Fatalf("Copy: %d, %v; want %d", k, err, n)
	}
	if runtime.GOOS == "linux" && splice.Moved()-before != n {
		t.Errorf("%d bytes spliced, want %d", splice.Moved()-before, n)
	}
	got := make([]byte, len(tail))
	if _, err := io.ReadFull(r.src, got); err != nil || !bytes.Equal(got, tail) {
		t.Fatalf("after the copy src holds %q, %v; want %q", got, err, tail)
	}
	r.src.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if k, err := splice.Copy(r.dst, r.src, 1); k != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Copy from a silent socket: %d, %v; want the deadline", k, err)
	}
	r.dst.Close()
	if out := <-r.out; !bytes.Equal(out, body) {
		t.Fatalf("dst's peer read %d bytes, not the body", len(out))
	}
}

// A src that ends early ends the copy without an error, as io.Copy; the
// Reader's N says how much was missing.
func TestCopyEndsWithSource(t *testing.T) {
	r := newRelay(t)
	body := pattern(3 << 20)
	go func() {
		r.in.Write(body)
		r.in.Close()
	}()
	rd := &splice.Reader{C: r.src, N: 4 << 20}
	k, err := io.Copy(r.dst, rd)
	if err != nil || k != int64(len(body)) || rd.N != 1<<20 {
		t.Fatalf("io.Copy: %d, %v, N %d; want %d, nil, N %d", k, err, rd.N, len(body), 1<<20)
	}
	r.dst.Close()
	if out := <-r.out; !bytes.Equal(out, body) {
		t.Fatalf("dst's peer read %d bytes, not the body", len(out))
	}
}

// A dst that goes away ends the copy with its error.
func TestCopyDestinationGone(t *testing.T) {
	in, src := pair(t)
	dst, sink := pair(t)
	sink.SetLinger(0)
	sink.Close() // a reset: writes to dst fail
	go in.Write(pattern(4 << 20))
	k, err := splice.Copy(dst, src, 4<<20)
	if err == nil {
		t.Fatalf("Copy to a reset connection: %d, no error", k)
	}
}

// Written to what is not a socket, the bytes are copied; read, the
// Reader stops at N.
func TestReaderWithoutSocket(t *testing.T) {
	in, src := pair(t)
	body := pattern(1<<20 + 17)
	go in.Write(body)
	var buf bytes.Buffer
	rd := &splice.Reader{C: src, N: 1 << 20}
	before := splice.Moved()
	if k, err := io.Copy(&buf, rd); err != nil || k != 1<<20 || !bytes.Equal(buf.Bytes(), body[:1<<20]) {
		t.Fatalf("io.Copy to a buffer: %d, %v", k, err)
	}
	if splice.Moved() != before {
		t.Errorf("bytes spliced to a buffer")
	}
	rest, err := io.ReadAll(&splice.Reader{C: src, N: 17})
	if err != nil || !bytes.Equal(rest, body[1<<20:]) {
		t.Fatalf("Read: %q, %v", rest, err)
	}
}

// net.TCPConn.ReadFrom (what net/http's response uses under a body of
// known length) splices a Reader.
func TestTCPConnReadFromSplices(t *testing.T) {
	r := newRelay(t)
	body := pattern(2 << 20)
	go r.in.Write(body)
	before := splice.Moved()
	k, err := r.dst.ReadFrom(&splice.Reader{C: r.src, N: int64(len(body))})
	if err != nil || k != int64(len(body)) {
		t.Fatalf("ReadFrom: %d, %v", k, err)
	}
	if runtime.GOOS == "linux" && splice.Moved()-before != k {
		t.Errorf("%d bytes spliced, want %d", splice.Moved()-before, k)
	}
	r.dst.Close()
	if out := <-r.out; !bytes.Equal(out, body) {
		t.Fatalf("dst's peer read %d bytes, not the body", len(out))
	}
}

// A file has a descriptor but is not a socket: the bytes are copied to
// it.
func TestReaderToFile(t *testing.T) {
	in, src := pair(t)
	body := pattern(1 << 20)
	go in.Write(body)
	f, err := os.Create(t.TempDir() + "/body")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := splice.Moved()
	if k, err := io.Copy(f, &splice.Reader{C: src, N: int64(len(body))}); err != nil || k != int64(len(body)) {
		t.Fatalf("io.Copy to a file: %d, %v", k, err)
	}
	if splice.Moved() != before {
		t.Errorf("bytes spliced to a file")
	}
	if got, err := os.ReadFile(f.Name()); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("the file holds %d bytes, %v", len(got), err)
	}
}
