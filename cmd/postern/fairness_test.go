package main_test

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/servertest"
)

// TestDefaultCapsKeepANodeServing runs `postern serve` with its defaults
// under an open-file limit of 400 and fills it with idle websockets from
// several addresses. The node derives its connection cap from the limit,
// so it never runs out of descriptors: one address gets its share and no
// more while 127.0.0.1 is served, and once the node is full it still
// answers /healthz, /readyz and /metrics and refuses the rest at once.
// Without the caps the websockets took every descriptor and new requests,
// health checks included, hung.
func TestDefaultCapsKeepANodeServing(t *testing.T) {
	const limit, maxConns, perAddr = 400, 400 - 128 - 16, (400 - 128 - 16) / 2
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh to set the child's open-file limit with ulimit")
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2*limit {
		t.Skipf("this test needs %d open files of its own; the limit is %d", 2*limit, lim.Cur)
	}
	bin := build(t)
	p := start(t, exec.Command("sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, limit),
		bin, "serve", "--listen", "127.0.0.1:0", "--store", "memory"))
	if want := fmt.Sprintf("max_connections=%d max_connections_per_addr=%d file_limit=%d", maxConns, perAddr, limit); !strings.Contains(p.log(), want) {
		t.Fatalf("start-up log lacks %q:\n%s", want, p.log())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hold := func(ip string, n int) map[int]int {
		t.Helper()
		return servertest.HoldWebsockets(ctx, t, p.URL, ip, n)
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := servertest.ClientFrom(t, "127.0.0.1").Get(p.URL + path)
		if err != nil {
			t.Fatalf("GET %s from 127.0.0.1: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if got := hold("127.0.0.2", perAddr+50); got[101] != perAddr || got[429] != 50 {
		t.Fatalf("websockets from 127.0.0.2: %v, want %d held and 50 refused 429", got, perAddr)
	}
	if code, _ := get("/inbox"); code != 200 {
		t.Fatalf("127.0.0.1 while 127.0.0.2 holds its share: %d", code)
	}
	// A second address fills the node.
	if got := hold("127.0.0.3", perAddr+50); got[101] != perAddr || got[429] != 50 {
		t.Fatalf("websockets from 127.0.0.3: %v, want %d held and 50 refused 429", got, perAddr)
	}
	if got := hold("127.0.0.4", 20); got[503] != 20 {
		t.Fatalf("websockets from 127.0.0.4 to a full node: %v, want 503s", got)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := get(path); code != 200 {
			t.Fatalf("%s on a full node: %d", path, code)
		}
	}
	if code, body := get("/inbox"); code != 503 || !strings.HasPrefix(body, "too many connections") {
		t.Fatalf("/inbox on a full node: %d %q", code, body)
	}
}
