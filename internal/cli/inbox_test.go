package cli_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/servertest"
)

type sendOut struct {
	IdempotencyKey string `json:"idempotencyKey"`
	Sent           int    `json:"sent"`
}

func inboxSend(t *testing.T, url, stdin string, args ...string) sendOut {
	t.Helper()
	code, out, errs := run(t, context.Background(), nil, stdin, append([]string{"inbox", "send", "--server", url}, args...)...)
	var res sendOut
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !strings.HasSuffix(out, "}\n") {
		t.Fatalf("inbox send %v: exit %d, out %q, stderr %q", args, code, out, errs)
	}
	return res
}

// inboxReceive runs `postern inbox receive` and returns the entries it
// printed, decoded.
func inboxReceive(t *testing.T, url string, args ...string) ([]map[string]any, string) {
	t.Helper()
	code, out, errs := run(t, context.Background(), nil, "", append([]string{"inbox", "receive", "--server", url}, args...)...)
	var got []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("inbox receive %v: exit %d, out %q, stderr %q", args, code, out, errs)
	}
	return got, errs
}

func TestInboxSendReceive(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	res := inboxSend(t, n.URL, "", "--from", "olivia", "--to", "maurice, george", "--ack", "--key", "000000000000", "Hey there, are you ok?")
	if res != (sendOut{"000000000000", 2}) {
		t.Fatalf("send printed %+v", res)
	}
	// JSON bodies go as JSON, anything else as a string; --string forces a
	// string; standard input works, without its trailing newline.
	inboxSend(t, n.URL, "", "--from", "maurice", "--to", "george", "--key", "111111111111", `{"lorem": "ipsum"}`)
	inboxSend(t, n.URL, "", "--from", "maurice", "--to", "george", "--key", "222222222222", "--string", "42")
	inboxSend(t, n.URL, "7\n", "--from", "maurice", "--to", "george", "--key", "333333333333")
	random := inboxSend(t, n.URL, "plain text\n", "--from", "maurice", "--to", "george", "-")
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`).MatchString(random.IdempotencyKey) {
		t.Fatalf("random key %q is not 43 url-safe characters", random.IdempotencyKey)
	}

	got, _ := inboxReceive(t, n.URL, "--as", "george")
	wantBodies := []any{"Hey there, are you ok?", map[string]any{"lorem": "ipsum"}, "42", float64(7), "plain text"}
	if len(got) != len(wantBodies) {
		t.Fatalf("george received %v", got)
	}
	for i, m := range got {
		b1, _ := json.Marshal(m["body"])
		b2, _ := json.Marshal(wantBodies[i])
		if string(b1) != string(b2) || m["type"] != "msg" {
			t.Fatalf("entry %d = %v, want body %s", i, m, b2)
		}
	}
	if got[0]["origin"] != "olivia" || got[0]["expectsAck"] != true || got[0]["idempotencyKey"] != "000000000000" || got[4]["idempotencyKey"] != random.IdempotencyKey {
		t.Fatalf("entries: %v", got)
	}
	// The printed array is the server's wire form.
	if _, ok := got[0]["sentAt"].(string); !ok {
		t.Fatalf("no sentAt: %v", got[0])
	}
	got, _ = inboxReceive(t, n.URL, "--as", "olivia")
	if len(got) != 1 || got[0]["type"] != "ack" || got[0]["destination"] != "george" {
		t.Fatalf("olivia received %v", got)
	}
	if got, _ = inboxReceive(t, n.URL, "--as", "george"); len(got) != 0 {
		t.Fatalf("second receive: %v", got)
	}
}

func TestInboxReceiveAll(t *testing.T) {
	cfg := servertest.Config()
	cfg.Inbox.MaxReceive = 2
	n := servertest.Start(t, cfg)
	for range 5 {
		inboxSend(t, n.URL, "", "--from", "a", "--to", "b", "x")
	}
	got, errs := inboxReceive(t, n.URL, "--as", "b")
	if len(got) != 2 || !strings.Contains(errs, "3 more waiting") {
		t.Fatalf("capped receive: %d entries, stderr %q", len(got), errs)
	}
	got, errs = inboxReceive(t, n.URL, "--as", "b", "--all")
	if len(got) != 3 || errs != "" {
		t.Fatalf("receive --all: %d entries, stderr %q", len(got), errs)
	}
}

func TestInboxErrorsAndUsage(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	ctx := context.Background()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inbox"}, cli.ExitUsage, "send or receive"},
		{[]string{"inbox", "frob"}, cli.ExitUsage, `unknown command "frob"`},
		{[]string{"inbox", "sned"}, cli.ExitUsage, `(did you mean "send"?)`},
		{[]string{"inbox", "send", "--server", n.URL, "--to", "b", "x"}, cli.ExitUsage, "--from is required"},
		{[]string{"inbox", "send", "--server", n.URL, "--from", "a", "x"}, cli.ExitUsage, "--to is required"},
		{[]string{"inbox", "send", "--server", n.URL, "--from", "a", "--to", "b", "x", "y"}, cli.ExitUsage, "at most one BODY"},
		{[]string{"inbox", "receive", "--server", n.URL}, cli.ExitUsage, "--as is required"},
		// The server's problems, on one line.
		{[]string{"inbox", "send", "--server", n.URL, "--from", "a", "--to", "b", "--key", "short", "x"}, cli.ExitError,
			"postern inbox send: 400 Bad request: idempotency key is too short\n"},
	} {
		code, _, errs := run(t, ctx, nil, "", c.args...)
		if code != c.code || !strings.Contains(errs, c.want) || strings.Count(strings.TrimSpace(errs), "\n") > 1 {
			t.Errorf("%v: exit %d, stderr %q; want %d naming %q", c.args, code, errs, c.code, c.want)
		}
	}
	if code, out, _ := run(t, ctx, nil, "", "inbox", "--help"); code != 0 || !strings.Contains(out, "--from A --to B,C") {
		t.Fatalf("inbox --help: %d %q", code, out)
	}
	if code, out, _ := run(t, ctx, nil, "", "inbox", "send", "--help"); code != 0 || !strings.Contains(out, "--ack") {
		t.Fatalf("inbox send --help: %d %q", code, out)
	}
	if code, out, _ := run(t, ctx, nil, "", "help"); code != 0 || !strings.Contains(out, "inbox") {
		t.Fatalf("help does not list inbox: %q", out)
	}
}

func TestInboxTokens(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tokens.toml")
	os.WriteFile(f, []byte("[[token]]\nname = \"a\"\nsecret = \"a-secret-0123456789\"\n[[token.grant]]\nactions = [\"read\", \"write\"]\npaths = [\"/inbox/a\"]\n"), 0o600)
	url, _ := serve(t, nil, "--token-file", f)
	ctx := context.Background()
	code, _, errs := run(t, ctx, nil, "", "inbox", "send", "--server", url, "--from", "a", "--to", "a", "x")
	if code != cli.ExitDenied || !strings.Contains(errs, `403: this action needs a token granted "write" on /inbox/a (--token or POSTERN_TOKEN)`) {
		t.Fatalf("send without token: %d %q", code, errs)
	}
	code, _, errs = run(t, ctx, map[string]string{"POSTERN_TOKEN": "a-secret-0123456789"}, "", "inbox", "send", "--server", url, "--from", "a", "--to", "a", "x")
	if code != 0 {
		t.Fatalf("send with token: %d %q", code, errs)
	}
	code, out, _ := run(t, ctx, nil, "", "inbox", "receive", "--server", url, "--as", "a", "--token", "a-secret-0123456789")
	if code != 0 || !strings.Contains(out, `"body":"x"`) {
		t.Fatalf("receive with token: %d %q", code, out)
	}
	// Through the client package too, with its typed errors.
	cl, _ := client.New(url, client.WithToken("a-secret-0123456789"))
	_, _, err := cl.Inbox("b").Receive(ctx)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.StatusCode != 403 || len(ce.Details) != 1 {
		t.Fatalf("receive as b: %v", err)
	}
}

func TestServeInboxSettings(t *testing.T) {
	// The seed's variable is honoured (a bare number is seconds) and
	// checked at start.
	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"REDIS_EXPIRATION_SECONDS": "soon"}, nil, "REDIS_EXPIRATION_SECONDS"},
		{map[string]string{"REDIS_EXPIRATION_SECONDS": "0"}, nil, "inbox expiration must be at least 1s"},
		{nil, []string{"--inbox-max-receive", "0"}, "inbox max receive"},
		{nil, []string{"--inbox-max-destinations", "-1"}, "inbox max destinations"},
	} {
		code, _, stderr := run(t, context.Background(), c.env, "", append([]string{"serve", "--listen", "127.0.0.1:0"}, c.args...)...)
		if code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("serve %v %v: exit %d, stderr %q; want a failure naming %q", c.env, c.args, code, stderr, c.want)
		}
	}
	url, _ := serve(t, map[string]string{"REDIS_EXPIRATION_SECONDS": "604800", "POSTERN_INBOX_MAX_RECEIVE": "1"})
	for range 2 {
		inboxSend(t, url, "", "--from", "a", "--to", "b", "x")
	}
	if got, errs := inboxReceive(t, url, "--as", "b"); len(got) != 1 || !strings.Contains(errs, "1 more waiting") {
		t.Fatalf("POSTERN_INBOX_MAX_RECEIVE=1: %d entries, %q", len(got), errs)
	}
	if code, out, _ := run(t, context.Background(), nil, "", "serve", "--help"); code != 0 || !strings.Contains(out, "POSTERN_INBOX_EXPIRATION, REDIS_EXPIRATION_SECONDS") {
		t.Fatalf("serve --help lacks the inbox expiration: %q", out)
	}
}
