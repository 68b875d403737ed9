package cli_test

import (
	"context"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/postern/postern/client"
)

// TestStreamingCommandsReconnect (issue point 2): sub, recv --follow --ack
// and inbox receive --follow keep going through a server restart, and
// print every message once, in order: sub resumes after its last id, recv
// --follow --ack finds what was queued meanwhile.
func TestStreamingCommandsReconnect(t *testing.T) {
	n := startNode(t, nil)
	srv := "--server=" + n.URL
	sub := startBin(t, nil, "sub", srv, "--ids", "/news")
	recv := startBin(t, nil, "recv", srv, "--follow", "--ack", "jobs")
	inbox := startBin(t, nil, "inbox", "receive", srv, "--follow", "--interval", "100ms", "--as", "b")
	n.waitSubscribers("/news", 1)
	n.waitLongPolls(1)

	ctx := context.Background()
	send := func() (*client.Client, func(tunnel, channel, mail string)) {
		c := mustClient(t, n.URL)
		return c, func(tunnel, channel, mail string) {
			t.Helper()
			if _, err := c.Tunnel("jobs").Send(ctx, []byte(tunnel), client.SendOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := c.Channel("/news").Publish(ctx, []byte(channel)); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Inbox("a").Send(ctx, client.Envelope{IdempotencyKey: client.NewIdempotencyKey(), Destination: []string{"b"}, Body: []byte(`"` + mail + `"`)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, say := send()
	say("job 1", "news 1", "mail 1")
	idLine := regexp.MustCompile(`^\d+-\d+\t`)
	if l := sub.line(); !idLine.MatchString(l) || !strings.HasSuffix(l, "\tnews 1") {
		t.Fatalf("sub printed %q", l)
	}
	if l := recv.line(); l != "job 1" {
		t.Fatalf("recv printed %q", l)
	}
	if l := inbox.line(); !strings.Contains(l, `"body":"mail 1"`) {
		t.Fatalf("inbox printed %q", l)
	}

	// The server restarts; what is sent meanwhile reaches every command.
	n.stop()
	n.start()
	_, say = send()
	say("job 2", "news 2", "mail 2")
	if l := sub.line(); !strings.HasSuffix(l, "\tnews 2") {
		t.Fatalf("sub after the restart printed %q", l)
	}
	if l := recv.line(); l != "job 2" {
		t.Fatalf("recv after the restart printed %q", l)
	}
	if l := inbox.line(); !strings.Contains(l, `"body":"mail 2"`) {
		t.Fatalf("inbox after the restart printed %q", l)
	}
	n.waitSubscribers("/news", 1)
	say("job 3", "news 3", "mail 3")
	for _, c := range []struct {
		p    *proc
		want string
	}{{sub, "\tnews 3"}, {recv, "job 3"}, {inbox, `"body":"mail 3"`}} {
		if l := c.p.line(); !strings.Contains(l, c.want) {
			t.Fatalf("%v printed %q, want %q", c.p.cmd.Args[1:2], l, c.want)
		}
		code, rest := c.p.stop(syscall.SIGINT)
		if code != 0 || len(rest) > 0 {
			t.Errorf("%v: exit %d on SIGINT, printed %q besides: nothing twice", c.p.cmd.Args[1:2], code, rest)
		}
		errs := c.p.stderr.String()
		if !strings.Contains(errs, "reconnecting") || !strings.Contains(errs, "reconnected") || strings.Count(errs, "\n") > 4 {
			t.Errorf("%v stderr: %q; want one line on losing the server and one on finding it again", c.p.cmd.Args[1:2], errs)
		}
	}
	// Acknowledged: nothing left in the tunnel.
	if l, err := mustClient(t, n.URL).Tunnel("jobs").Len(ctx); l != 0 || err != nil {
		t.Fatalf("jobs left: %d %v", l, err)
	}
}

// TestRecvWaitsThroughShutdown (issue point 2): a plain recv waiting while
// the server shuts down does not report an empty queue; it waits for the
// server to come back and takes the message sent then.
func TestRecvWaitsThroughShutdown(t *testing.T) {
	n := startNode(t, nil)
	recv := startBin(t, nil, "recv", "--server", n.URL, "--wait", "60s", "later")
	n.waitLongPolls(1)
	n.stop()
	n.start()
	if _, err := mustClient(t, n.URL).Tunnel("later").Send(context.Background(), []byte("after the restart"), client.SendOptions{}); err != nil {
		t.Fatal(err)
	}
	if l := recv.line(); l != "after the restart" {
		t.Fatalf("recv printed %q", l)
	}
	<-recv.exited
	if code := recv.cmd.ProcessState.ExitCode(); code != 0 || strings.Contains(recv.stderr.String(), "no message") {
		t.Fatalf("exit %d, stderr %q", code, recv.stderr)
	}
}
