package cli_test

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/node"
)

// TestExposeInspect: --inspect refuses an address that is not loopback
// unless --inspect-public; on loopback it prints where it is, records
// what the agent forwards, and stops with the agent.
func TestExposeInspect(t *testing.T) {
	n := startNode(t, func(c *node.Config) { c.Expose.Domain = "localhost" })
	be := backendServer(t)
	r := runBin(t, nil, "", "expose", "--server", n.URL, "--name", "x", "--inspect", "0.0.0.0:0", be.URL)
	if r.code != cli.ExitUsage || !strings.Contains(r.stderr, "--inspect 0.0.0.0:0 is not a loopback address") || !strings.Contains(r.stderr, "--inspect-public") {
		t.Fatalf("a public --inspect: exit %d, %q", r.code, r.stderr)
	}
	p := startBin(t, nil, "expose", "--server", n.URL, "--name", "x", "--inspect", "127.0.0.1:0", be.URL)
	l := p.line()
	ins, ok := strings.CutPrefix(l, "Inspecting ")
	if !ok {
		t.Fatalf("first line %q", l)
	}
	if l := p.line(); !strings.HasPrefix(l, "Forwarding http://x.localhost:") {
		t.Fatalf("second line %q", l)
	}
	if code, _, _ := httpDo(t, "GET", n.URL+"/proxy/request/x/seen?q=1", ""); code != 200 {
		t.Fatalf("through the agent: %d", code)
	}
	res, err := http.Get(ins + "/api/requests")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Requests []struct{ ID, Path string }
	}
	json.NewDecoder(res.Body).Decode(&list)
	res.Body.Close()
	if len(list.Requests) != 1 || list.Requests[0].Path != "/seen?q=1" || list.Requests[0].ID == "" {
		t.Fatalf("the inspector lists %+v", list.Requests)
	}
	if code, _ := p.stop(os.Interrupt); code != 0 {
		t.Fatalf("exit %d: %s", code, p.stderr)
	}
	if _, err := http.Get(ins + "/api/requests"); err == nil {
		t.Fatal("the inspector still answers after the agent stopped")
	}
}
