package cli_test

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/servertest"
)

func TestPubSub(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- cli.Main(ctx, []string{"sub", "--server", n.URL, "--ids", "/room"}, cli.Env{
			Stdin: strings.NewReader(""), Stdout: pw, Stderr: io.Discard, Getenv: func(string) string { return "" },
		})
		pw.Close()
	}()
	n.WaitForSubscribers(t, "/room", 1)
	sc := bufio.NewScanner(pr)
	var firstID string
	for i, msg := range []string{"hello", "from stdin"} {
		var c int
		if i == 0 {
			c, _, _ = run(t, ctx, nil, "", "pub", "--server", n.URL, "/room", msg)
		} else {
			c, _, _ = run(t, ctx, nil, msg, "pub", "--server", n.URL, "room", "-")
		}
		if c != 0 {
			t.Fatalf("pub exit %d", c)
		}
		if !sc.Scan() {
			t.Fatal("sub printed nothing")
		}
		id, got, ok := strings.Cut(sc.Text(), "\t")
		if !ok || got != msg || id == "" {
			t.Fatalf("sub printed %q, want <id>\\t%q", sc.Text(), msg)
		}
		if i == 0 {
			firstID = id
		}
	}
	cancel()
	go io.Copy(io.Discard, pr)
	if c := <-code; c != 0 {
		t.Fatalf("interrupted sub exit %d", c)
	}
	// Resume with --since: the second message again, then exit by --count.
	c, out, _ := run(t, context.Background(), nil, "", "sub", "--server", n.URL, "--since", firstID, "--count", "1", "/room")
	if c != 0 || out != "from stdin\n" {
		t.Fatalf("sub --since: %d %q", c, out)
	}
	// Errors are one line with the server's reason.
	c, _, errs := run(t, context.Background(), nil, "", "pub", "--server", n.URL, "/"+strings.Repeat("x", 300), "m")
	if c != cli.ExitError || !strings.Contains(errs, "400 Error: bad request. Path length") || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
		t.Fatalf("pub long path: %d %q", c, errs)
	}
	c, _, errs = run(t, context.Background(), nil, "", "sub", "--server", n.URL, "--since", "bogus", "/room")
	if c != cli.ExitError || !strings.Contains(errs, "400") {
		t.Fatalf("sub bad since: %d %q", c, errs)
	}
	if c, _, _ := run(t, context.Background(), nil, "", "sub"); c != cli.ExitUsage {
		t.Fatalf("sub without path: %d", c)
	}
}
