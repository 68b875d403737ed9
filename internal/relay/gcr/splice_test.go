package gcr_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/gcr"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
	"github.com/postern/postern/internal/relay/splice"
)

// sizedBackend serves size bytes of a pattern with their length declared
// on every path but /small; each answer's handler reports how its writing
// ended on done (nil: all written), and writes what it writes in blocks,
// after calling before(written) ahead of each.
func sizedBackend(t *testing.T, size int64, before func(ctx context.Context, written int64), done chan<- error) string {
	t.Helper()
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i * 7 % 251)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			w.Write([]byte("small"))
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		if r.Method == http.MethodHead {
			return
		}
		var n int64
		var err error
		for n < size && err == nil {
			if before != nil {
				before(r.Context(), n)
			}
			var k int
			k, err = w.Write(block[:min(int64(len(block)), size-n)])
			n += int64(k)
		}
		if done != nil {
			done <- err
		}
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv.URL
}

func pattern(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i % (1 << 20) * 7 % 251)
	}
	return b
}

// A large body that postern relay posts with its length goes from the
// poster's connection to the user's without being read by the server
// (spliced): it arrives whole and in order, a HEAD of it has its length
// and no body, and small requests after it are served as before.
func TestServerSplicesLargeBodies(t *testing.T) {
	e := start(t, nil)
	const size = 5<<20 + 12345
	be := sizedBackend(t, size, nil, nil)
	e.tuned("splice", be)
	want := pattern(size)
	for i := range 2 {
		before, movedBefore := gcr.SplicedBytes(), splice.Moved()
		r := e.do("GET", "/client/splice/big", nil)
		if r.err != nil || r.status != 200 || !bytes.Equal([]byte(r.body), want) {
			t.Fatalf("download %d: %d, %d bytes, %v", i, r.status, len(r.body), r.err)
		}
		if r.h.Get("Content-Length") != strconv.Itoa(size) {
			t.Fatalf("download %d: Content-Length %q, want %d", i, r.h.Get("Content-Length"), size)
		}
		// Only the start of the body, read with the message's head, is
		// not spliced.
		if got := gcr.SplicedBytes() - before; got < size-256<<10 {
			t.Fatalf("download %d: %d bytes spliced, want at least %d", i, got, size-256<<10)
		}
		// The kernel moved them, and the relay client's post too (both
		// run in this process): the server's splice through the user's
		// response reached the socket underneath.
		if got := splice.Moved() - movedBefore; runtime.GOOS == "linux" && got < 2*(size-256<<10) {
			t.Fatalf("download %d: %d bytes moved by splice, want at least %d", i, got, 2*(size-256<<10))
		}
	}
	r := e.do("HEAD", "/client/splice/big", nil)
	if r.err != nil || r.status != 200 || r.body != "" || r.h.Get("Content-Length") != strconv.Itoa(size) {
		t.Fatalf("HEAD: %d, %q, Content-Length %q, %v", r.status, r.body, r.h.Get("Content-Length"), r.err)
	}
	e.want(e.do("GET", "/client/splice/small", nil), 200, "small")
	// A spliced post is answered on its own connection: its metrics show
	// that answer, not the 101 of a connection taken over.
	metrics := e.do("GET", "/metrics", nil).body
	if !strings.Contains(metrics, `postern_http_requests_total{code="200",route="relay.response"}`) ||
		strings.Contains(metrics, `code="101",route="relay.response"`) {
		t.Errorf("relay.response metrics:\n%s", grep(metrics, "relay.response"))
	}
}

// A user who goes away in the middle of a spliced download, while the
// body flows or while the backend is silent, ends it: the relay client
// stops posting and closes its backend connection (whose handler sees its
// write fail), and the next request is served.
func TestSplicedDownloadUserGoesAway(t *testing.T) {
	for _, stall := range []bool{false, true} {
		t.Run(fmt.Sprintf("stalled=%v", stall), func(t *testing.T) {
			e := start(t, nil)
			done := make(chan error, 1)
			before := func(ctx context.Context, written int64) {
				if stall && written >= 4<<20 {
					<-ctx.Done() // silent until the relay client closes the connection
				}
			}
			be := sizedBackend(t, 1<<30, before, done)
			e.tuned("away", be)
			spliced := gcr.SplicedBytes()
			ctx, cancel := context.WithCancel(ctxT(t))
			req, _ := http.NewRequestWithContext(ctx, "GET", e.node.URL+"/client/away/endless", nil)
			resp, err := e.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 3<<20)); err != nil {
				t.Fatal(err)
			}
			cancel()
			resp.Body.Close()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("the backend wrote its endless body whole")
				}
			case <-ctxT(t).Done():
				t.Fatal("the backend's answer went on after the user went away")
			}
			if gcr.SplicedBytes() == spliced {
				t.Fatal("nothing was spliced")
			}
			e.want(e.do("GET", "/client/away/small", nil), 200, "small")
		})
	}
}

// A relay client that dies in the middle of a spliced body cuts the
// user's answer: the user gets an error (never a short body taken as
// whole, never a hang), and the relay's goroutines end (TestMain checks).
func TestSplicedDownloadRelayClientDies(t *testing.T) {
	e := start(t, nil)
	const size = 64 << 20
	be := sizedBackend(t, size, func(ctx context.Context, written int64) {
		if written >= 4<<20 {
			<-ctx.Done()
		}
	}, nil)
	c, err := gcrclient.New(gcrclient.Tuned(gcrclient.Options{RelayURL: e.node.URL, ServerName: "dies", BackendURL: be}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		<-ran
	})
	if err := e.node.WaitForRelayPolls(ctxT(t), "dies", 1); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctxT(t), "GET", e.node.URL+"/client/dies/big", nil)
	resp, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 3<<20)); err != nil {
		t.Fatal(err)
	}
	stop()
	<-ran
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("after %d more bytes: %v, want the answer cut", n, err)
	}
}

// A user who reads fast and then slowly, so that one spliced step (grown
// while the user was fast) lasts longer than the inactivity timeout, gets
// the whole body: the relay client's bytes move on towards the user all
// along, which is no silence of the relay client's.
//
// The timeout is 3 s: the step's watcher looks every 750 ms, and a second
// (as before) was cut on a loaded machine, where this process waited
// longer than the 250 ms left between looks for a CPU. The steps double
// up to 16 MiB while the user is fast (about 15.5 MiB); at the slow pace
// the next one lasts about 5 s.
func TestSplicedDownloadToASlowingUser(t *testing.T) {
	const timeout = 3 * time.Second
	e := start(t, func(c *node.Config) { c.Relay.InactiveRequestTimeout = timeout })
	const size = 32 << 20
	e.tuned("slowing", sizedBackend(t, size, nil, nil))
	// The user's receive buffer is small and fixed (the kernel would grow
	// it to megabytes while the user reads fast), so that the node's steps
	// wait for the user's reads rather than fill the buffer.
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			err = c.(*net.TCPConn).SetReadBuffer(256 << 10)
		}
		return c, err
	}}
	t.Cleanup(tr.CloseIdleConnections)
	spliced := gcr.SplicedBytes()
	resp, err := (&http.Client{Transport: tr}).Get(e.node.URL + "/client/slowing/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make([]byte, size)
	if _, err := io.ReadFull(resp.Body, got[:16<<20]); err != nil {
		t.Fatal(err)
	}
	// The pace is what is tested: 256 KiB every 100 ms from here on,
	// about 2.5 MB/s.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for at := 16 << 20; at < size; {
		<-tick.C
		n, err := io.ReadFull(resp.Body, got[at:min(at+256<<10, size)])
		at += n
		if err != nil {
			t.Fatalf("after %d bytes: %v", at, err)
		}
	}
	if !bytes.Equal(got, pattern(size)) {
		t.Fatal("not the body")
	}
	if gcr.SplicedBytes() == spliced {
		t.Fatal("nothing was spliced")
	}
}
