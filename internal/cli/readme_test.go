package cli_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// TestReadmeFirstFiveMinutes (issue point 10) runs README's "First five
// minutes" block as a newcomer would, top to bottom, with the installed
// binary on PATH; POSTERN_SERVER points it at the test's server instead of
// :8080, the one thing a reader's machine has that a test must not take.
func TestReadmeFirstFiveMinutes(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- first-five-minutes -->\n```sh\n")
	if !ok {
		t.Fatal("README.md has no first-five-minutes block")
	}
	script, _, _ := strings.Cut(rest, "```")
	n := servertest.Start(t, servertest.Config())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Env = cleanEnv("PATH="+filepath.Dir(postern(t))+":"+os.Getenv("PATH"), "POSTERN_SERVER="+n.URL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the walk-through failed: %v\n%s", err, out)
	}
	for _, want := range []string{"postern ", "\nhello\n", "\npong\n", "\nfirst\n", `"body":"are you ok?"`} {
		if !strings.Contains("\n"+string(out), want) {
			t.Errorf("the walk-through did not print %q:\n%s", want, out)
		}
	}
}

// readmeBlock returns the lines of README's sh block after marker.
func readmeBlock(t *testing.T, marker string) []string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- "+marker+" -->\n```sh\n")
	if !ok {
		t.Fatalf("README.md has no %s block", marker)
	}
	block, _, _ := strings.Cut(rest, "```")
	return strings.Split(strings.TrimSpace(block), "\n")
}

// runReadmeExpose runs an "Expose in one minute" block as a reader would,
// against a server with --expose-domain localhost and a local service in
// place of :8080 and :3000: a line ending in "&" starts an agent (the next
// line runs once it printed its Forwarding line), any other line runs in
// bash and must print what its trailing "# " comment says. subst maps
// more of the block's addresses to the test's.
func runReadmeExpose(t *testing.T, marker string, subst ...string) {
	n := startNode(t, func(c *node.Config) { c.Expose.Domain = "localhost" })
	local := backendServer(t)
	pairs := append([]string{"http://127.0.0.1:8080", n.URL, "http://localhost:3000", local.URL}, subst...)
	repl := strings.NewReplacer(pairs...)
	env := []string{"PATH=" + filepath.Dir(postern(t)) + ":" + os.Getenv("PATH"), "POSTERN_SERVER=" + n.URL}
	for _, line := range readmeBlock(t, marker) {
		line = repl.Replace(line)
		if cmd, ok := strings.CutSuffix(strings.TrimSpace(line), "&"); ok {
			p := startCmd(t, exec.Command("bash", "-c", "exec env "+cmd), env)
			l := p.line()
			if strings.HasPrefix(l, "Inspecting ") {
				l = p.line()
			}
			if !strings.HasPrefix(l, "Forwarding ") {
				t.Fatalf("%s printed %q", cmd, l)
			}
			continue
		}
		cmd, want, _ := strings.Cut(line, "   # ")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", cmd)
		c.Env = cleanEnv(env...)
		out, err := c.Output()
		cancel()
		if err != nil || strings.TrimSpace(string(out)) != strings.TrimSpace(want) {
			t.Fatalf("%s\nprinted %q (%v), README says %q", cmd, out, err, want)
		}
	}
}

// TestReadmeExposeAccessRules runs README's access rules example.
func TestReadmeExposeAccessRules(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is not installed (.ci/run installs it)")
	}
	runReadmeExpose(t, "expose-access")
}

// TestReadmeExposeInspector runs README's inspector example, on a free
// port in place of 4040.
func TestReadmeExposeInspector(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is not installed (.ci/run installs it)")
	}
	runReadmeExpose(t, "expose-inspect", "127.0.0.1:4040", freeAddr(t))
}

// freeAddr is a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestReadmeExposeTCP runs README's raw TCP block of "Expose in one
// minute" as a user would: its `postern serve` line (on a port of the
// test's, with the memory engine) and its `postern expose` line (with the
// test's echo service for the SSH server), then a session through the
// port the agent printed, which must be of the range the block gives.
func TestReadmeExposeTCP(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- expose-tcp -->\n```sh\n")
	if !ok {
		t.Fatal("README.md has no expose-tcp block")
	}
	block, _, _ := strings.Cut(rest, "```")
	var serveArgs, exposeArgs []string
	var printed string
	for _, line := range strings.Split(block, "\n") {
		cmd, comment, _ := strings.Cut(line, "#")
		f := strings.Fields(cmd)
		switch {
		case len(f) > 1 && f[0] == "postern" && f[1] == "serve":
			serveArgs = f[1:]
		case len(f) > 1 && f[0] == "postern" && f[1] == "expose":
			exposeArgs = f[1:]
			printed = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(comment), "prints:"))
		}
	}
	if serveArgs == nil || exposeArgs == nil || printed == "" {
		t.Fatalf("the block lacks a postern serve line, a postern expose line or what it prints:\n%s", block)
	}
	lo, hi := 0, 0
	for i, a := range serveArgs {
		if a == "--expose-tcp-ports" && i+1 < len(serveArgs) {
			fmt.Sscanf(serveArgs[i+1], "%d-%d", &lo, &hi)
		}
	}
	if lo == 0 || hi < lo {
		t.Fatalf("the serve line %q gives no port range", serveArgs)
	}

	url, stop := serve(t, nil, serveArgs[1:]...)
	defer stop()
	local := exposeArgs[len(exposeArgs)-1]
	echo := "tcp://" + tcpEcho(t)
	args := append(append([]string{}, exposeArgs[:len(exposeArgs)-1]...), echo)
	agent := startBin(t, []string{"POSTERN_SERVER=" + url}, args...)
	line := agent.line()
	var port int
	if _, err := fmt.Sscanf(line, "Forwarding tcp://127.0.0.1:%d -> "+echo, &port); err != nil || port < lo || port > hi {
		t.Fatalf("printed %q; the README promises the shape of %q with a port of %d-%d", line, printed, lo, hi)
	}
	if want := strings.Replace(printed, local, echo, 1); !strings.HasPrefix(want, "Forwarding tcp://127.0.0.1:") {
		t.Fatalf("the README's printed line %q is not of the agent's shape", printed)
	}
	if got, err := echoVia(t, fmt.Sprintf("127.0.0.1:%d", port), "SSH-2.0-readme"); err != nil || got != "SSH-2.0-readme" {
		t.Fatalf("a session through the printed port: %q %v", got, err)
	}
	if code, _ := agent.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("the agent exited %d on SIGTERM", code)
	}
}
