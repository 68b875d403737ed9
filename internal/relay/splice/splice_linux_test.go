package splice_test

import (
	"bytes"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/postern/postern/internal/relay/splice"
)

// congestion returns the congestion control of c.
func congestion(t *testing.T, c *net.TCPConn) string {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var name string
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		name, gerr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return name
}

// A loopback socket spliced to sends with reno, which the kernel does not
// pace (see the package comment); the socket read from keeps its own.
func TestLoopbackDestinationUnpaced(t *testing.T) {
	r := newRelay(t)
	srcBefore := congestion(t, r.src)
	body := pattern(2 << 20)
	go r.in.Write(body)
	if k, err := splice.Copy(r.dst, r.src, int64(len(body))); err != nil || k != int64(len(body)) {
		t.Fatalf("Copy: %d, %v", k, err)
	}
	if got := congestion(t, r.dst); got != "reno" {
		t.Errorf("dst's congestion control is %q, want reno", got)
	}
	if got := congestion(t, r.src); got != srcBefore {
		t.Errorf("src's congestion control changed from %q to %q", srcBefore, got)
	}
	r.dst.Close()
	if out := <-r.out; !bytes.Equal(out, body) {
		t.Fatalf("dst's peer read %d bytes, not the body", len(out))
	}
}

// A connection dialed to a loopback address with DialControl starts with
// reno.
func TestDialControlLoopback(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: splice.DialControl}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := congestion(t, c.(*net.TCPConn)); got != "reno" {
		t.Errorf("congestion control %q, want reno", got)
	}
}
