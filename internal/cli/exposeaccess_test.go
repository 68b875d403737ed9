package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/node"
)

// TestExposeAccessFlags: access rules that make no sense stop the agent
// before it connects, naming the flag (exit 2); a token file whose grant
// requires a rule the agent does not ask for refuses it for good, saying
// which (exit 5); with the rule the agent serves.
func TestExposeAccessFlags(t *testing.T) {
	tokens := filepath.Join(t.TempDir(), "tokens.toml")
	os.WriteFile(tokens, []byte("[[token]]\nname = \"agent\"\nsecret = \"agent-secret-000001\"\n[[token.grant]]\nactions = [\"serve\"]\npaths = [\"/expose/*\"]\nrequire = [\"allow-cidr\"]\n"), 0o600)
	n := startNode(t, func(c *node.Config) { c.TokenFile = tokens; c.Expose.Domain = "localhost" })
	be := backendServer(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--basic-auth", "ann"}, "--basic-auth: want user:password, both not empty"},
		{[]string{"--allow-cidr", "10.0.0.0/8,10.1.2.3/99"}, `--allow-cidr: allowed address "10.1.2.3/99": want a range such as 10.0.0.0/8`},
		{[]string{"--response-header", "Transfer-Encoding: chunked"}, "--response-header: Transfer-Encoding: not settable"},
		{[]string{"--response-header", "no colon"}, `--response-header: "no colon": want 'Name: value'`},
	} {
		r := runBin(t, []string{"POSTERN_TOKEN=agent-secret-000001"}, "", append(append([]string{"expose", "--server", n.URL, "--name", "x"}, c.args...), be.URL)...)
		if r.code != cli.ExitUsage || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want %q", c.args, r.code, r.stderr, c.want)
		}
	}
	r := runBin(t, []string{"POSTERN_TOKEN=agent-secret-000001", "POSTERN_BASIC_AUTH=ann:pw"}, "", "expose", "--server", n.URL, "--name", "x", be.URL)
	if r.code != cli.ExitDenied || !strings.Contains(r.stderr, "403 the grant of serve on /expose/x requires allow-cidr: change the agent's access rules (--basic-auth, --allow-cidr, --response-header)") {
		t.Fatalf("without the required rule: exit %d, %q", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "ann:pw") {
		t.Fatalf("the password is in the output: %q", r.stderr)
	}
	p := startBin(t, []string{"POSTERN_TOKEN=agent-secret-000001", "POSTERN_BASIC_AUTH=ann:pw"}, "expose", "--server", n.URL, "--name", "x",
		"--allow-cidr", "127.0.0.0/8", "--allow-cidr", "::1", be.URL)
	if l := p.line(); !strings.HasPrefix(l, "Forwarding http://x.localhost:") {
		t.Fatalf("with the rule: %q", l)
	}
	if code, _ := p.stop(os.Interrupt); code != 0 || strings.Contains(p.stderr.String(), "ann:pw") {
		t.Fatalf("exit %d; logs: %s", code, p.stderr)
	}
}
