package cli_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
