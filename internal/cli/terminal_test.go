//go:build linux || darwin

package cli_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/servertest"
)

// TestTerminalInput (issue point 1): send, pub and inbox send reading
// their body from a terminal say so on standard error, and Ctrl-C typed
// at the terminal ends them at once (exit 130); a body typed and ended with
// Ctrl-D is sent. The terminal is a real pseudo-terminal, the controlling
// terminal of the command, so Ctrl-C goes through the line discipline as
// it does for a person.
func TestTerminalInput(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	for _, args := range [][]string{
		{"send", "--server", n.URL, "demo"},
		{"pub", "--server", n.URL, "/news"},
		{"inbox", "send", "--server", n.URL, "--from", "a", "--to", "b"},
	} {
		// Ctrl-C while it waits for the body.
		tt := startTerminal(t, args...)
		tt.waitStderr("reading the")
		tt.typeKeys("\x03")
		if code := tt.wait(); code != cli.ExitInterrupted {
			t.Errorf("%v: Ctrl-C gave exit %d (stderr %q), want %d", args, code, tt.stderr, cli.ExitInterrupted)
		}
		if !strings.Contains(tt.stderr.String(), "end it with Ctrl-D") {
			t.Errorf("%v: the hint does not say how to end the body: %q", args, tt.stderr)
		}
	}
	// A body typed, then Ctrl-D.
	tt := startTerminal(t, "send", "--server", n.URL, "typed")
	tt.waitStderr("reading the message")
	tt.typeKeys("hello from a terminal\n\x04")
	if code := tt.wait(); code != 0 {
		t.Fatalf("send with a typed body: exit %d, %q", code, tt.stderr)
	}
	m, ok, err := mustClient(t, n.URL).Tunnel("typed").Receive(context.Background(), client.ReceiveOptions{})
	if err != nil || !ok || string(m.Body) != "hello from a terminal\n" {
		t.Fatalf("the typed message: %q %v %v", m.Body, ok, err)
	}
}

// terminal is a postern command whose standard input is a terminal.
type terminal struct {
	t      *testing.T
	cmd    *exec.Cmd
	tty    *os.File // the terminal's other end: what a person types into
	stderr *syncBuffer
	exited chan struct{}
}

func startTerminal(t *testing.T, args ...string) *terminal {
	t.Helper()
	cmd := exec.Command(postern(t), args...)
	cmd.Env = cleanEnv()
	tt := &terminal{t: t, cmd: cmd, stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = tt.stderr, tt.stderr
	// Standard input only is the terminal; it becomes the controlling
	// terminal of a new session, so Ctrl-C sends SIGINT to the command.
	ptmx, err := pty.StartWithAttrs(cmd, nil, &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0})
	if err != nil {
		t.Fatal(err)
	}
	tt.tty = ptmx
	go func() { cmd.Wait(); close(tt.exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-tt.exited
		ptmx.Close()
	})
	return tt
}

func (tt *terminal) waitStderr(s string) {
	tt.t.Helper()
	if !tt.stderr.waitFor(tt.exited, func(out string) bool { return strings.Contains(out, s) }) {
		tt.t.Fatalf("%v: no %q on standard error: %q", tt.cmd.Args[1:], s, tt.stderr)
	}
}

func (tt *terminal) typeKeys(s string) {
	tt.t.Helper()
	if _, err := tt.tty.WriteString(s); err != nil {
		tt.t.Fatal(err)
	}
}

// wait returns the exit code; the command must end within 10 s.
func (tt *terminal) wait() int {
	tt.t.Helper()
	select {
	case <-tt.exited:
	case <-time.After(10 * time.Second):
		tt.t.Fatalf("%v still running 10 s later: %q", tt.cmd.Args[1:], tt.stderr)
	}
	return tt.cmd.ProcessState.ExitCode()
}
