package cli_test

import (
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/postern/postern/internal/node"
)

var exposeRequestLog = regexp.MustCompile(`level=INFO msg=request method=GET host=\S+ path=/n/\d+ status=200 bytes=\d+ elapsed=\S+ client=`)

// TestExposeLogsEveryRequest: the agent's line per request reaches
// standard error while it runs (in batches, see batchWriter), and every
// line of requests answered before a stop is there when it has stopped.
func TestExposeLogsEveryRequest(t *testing.T) {
	n := startNode(t, func(c *node.Config) { c.Expose.Domain = "localhost" })
	be := backendServer(t)
	p := startBin(t, nil, "expose", "--server", n.URL, "--name", "logs", be.URL)
	if l := p.line(); !strings.HasPrefix(l, "Forwarding http://logs.localhost:") {
		t.Fatalf("first line: %q", l)
	}
	port := n.URL[strings.LastIndex(n.URL, ":"):]
	get := func(i int) {
		t.Helper()
		req, _ := http.NewRequest("GET", n.URL+"/n/"+strings.Repeat("1", i), nil)
		req.Host = "logs.localhost" + port
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	get(1)
	if !p.stderr.waitFor(p.exited, exposeRequestLog.MatchString) {
		t.Fatalf("no request line while running: %s", p.stderr)
	}
	const more = 40
	for i := 2; i <= more; i++ {
		get(i)
	}
	if code, _ := p.stop(os.Interrupt); code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, p.stderr)
	}
	logs := p.stderr.String()
	if got := len(exposeRequestLog.FindAllString(logs, -1)); got != more {
		t.Fatalf("%d request lines, want %d: %s", got, more, logs)
	}
	for i := 1; i <= more; i++ {
		if !strings.Contains(logs, " path=/n/"+strings.Repeat("1", i)+" ") {
			t.Fatalf("no line for request %d: %s", i, logs)
		}
	}
	if !strings.Contains(logs, `msg="expose: stopped" name=logs`) {
		t.Fatalf("no stop line after the requests: %s", logs)
	}
}
