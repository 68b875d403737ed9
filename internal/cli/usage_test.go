package cli_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// TestErrorsAPersonUnderstands (issue point 3): every failure is one line
// with one prefix saying what failed, why and what to do, and the exit
// code says which kind it was.
func TestErrorsAPersonUnderstands(t *testing.T) {
	tokens := filepath.Join(t.TempDir(), "tokens.toml")
	os.WriteFile(tokens, []byte("[[token]]\nname = \"r\"\nsecret = \"reader-secret-000001\"\n[[token.grant]]\nactions = [\"read\"]\npaths = [\"/c/*\", \"/t/*\"]\n"), 0o600)
	n := startNode(t, func(c *node.Config) { c.TokenFile = tokens })
	open := servertest.Start(t, servertest.Config())
	html := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(404)
		w.Write([]byte("<!DOCTYPE HTML><html><body>Not Found</body></html>"))
	}))
	defer html.Close()
	hostPort := strings.TrimPrefix(open.URL, "http://")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"send", "--server", "http://127.0.0.1:9", "demo", "x"}, cli.ExitUnavailable,
			`postern send: cannot reach postern at http://127.0.0.1:9: connection refused (is "postern serve" running? --server or POSTERN_SERVER)`},
		{[]string{"pub", "--server", "127.0.0.1:9", "/news", "x"}, cli.ExitUnavailable, `postern pub: cannot reach postern at http://127.0.0.1:9: connection refused`},
		{[]string{"send", "--server", n.URL, "demo", "x"}, cli.ExitDenied,
			`postern send: 403: this action needs a token granted "write" on /t/demo (--token or POSTERN_TOKEN)`},
		{[]string{"send", "--server", n.URL, "--token", "reader-secret-000001", "demo", "x"}, cli.ExitDenied,
			`postern send: 403: the token given is not granted "write" on /t/demo (check --token or POSTERN_TOKEN, and the server's --token-file)`},
		{[]string{"pub", "--server", n.URL, "/news", "x"}, cli.ExitDenied,
			`postern pub: 403: this action needs a token granted "write" on /c/news (--token or POSTERN_TOKEN)`},
		{[]string{"inbox", "send", "--server", n.URL, "--from", "olivia", "--to", "b", "x"}, cli.ExitDenied,
			`postern inbox send: 403: this action needs a token granted "write" on /inbox/olivia (--token or POSTERN_TOKEN)`},
		{[]string{"send", "--server", html.URL, "demo", "x"}, cli.ExitUnavailable,
			"postern send: " + html.URL + " answered 404 an HTML page, which is not an answer of postern (is --server pointing at postern, or a proxy in front of it?)"},
		{[]string{"send", "--server", hostPort, "café", "hi"}, cli.ExitError,
			`postern send: 400 Malformed url: a tunnel id is 1 to 1024 characters of A-Z a-z 0-9 - _ (not "café")`},
		{[]string{"send", "--server", hostPort, "my queue", "hi"}, cli.ExitError, `(not "my queue")`},
		{[]string{"send", "--server", hostPort, "a/b", "hi"}, cli.ExitError, `400 Malformed url: "b" is no route of a tunnel`},
		{[]string{"send", "--server", "ftp://x", "t", "x"}, cli.ExitUsage, "postern send: --server: server URL"},
		{[]string{"frobnicate"}, cli.ExitUsage, `postern: unknown command "frobnicate" (see 'postern --help')`},
		{[]string{"sned", "x"}, cli.ExitUsage, `postern: unknown command "sned" (did you mean "send"?)`},
		{[]string{"send", "--servr", "x", "t"}, cli.ExitUsage, `postern send: unknown flag: --servr (did you mean --server?)`},
		{[]string{"serve", "-listen", "127.0.0.1:0"}, cli.ExitUsage, `postern serve: unknown flag -listen (long flags take two dashes: --listen)`},
		{[]string{"recv", "--server", hostPort, "--wait", "0", "nothing"}, cli.ExitEmpty, "postern recv: no message"},
		{[]string{"reply", "--server", hostPort, "rpc", "1-0", "pong"}, cli.ExitError, "postern reply: message 1-0 of tunnel rpc is not pending"},
	} {
		r := runBin(t, nil, "", c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("postern %s: exit %d, stderr %q; want exit %d and one line holding %q", strings.Join(c.args, " "), r.code, r.stderr, c.code, c.want)
		}
	}
}

// TestNewVerbsAndOutputs (issue point 8): reply, token new, --json and
// framed text, and --since 0 on a channel nobody listened to (point 6).
func TestNewVerbsAndOutputs(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	srv := "--server=" + strings.TrimPrefix(n.URL, "http://") // host:port is http://host:port
	ctx := context.Background()

	// The request/response round: send --wait-reply, recv --pending --ids,
	// reply.
	producer := startBin(t, nil, "send", srv, "--wait-reply", "30s", "rpc", "ping")
	r := runBin(t, nil, "", "recv", srv, "--pending", "--ids", "rpc")
	id, body, ok := strings.Cut(strings.TrimSuffix(r.stdout, "\n"), "\t")
	if r.code != 0 || !ok || body != "ping" {
		t.Fatalf("recv --pending --ids: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := runBin(t, nil, "pong\n", "reply", srv, "rpc", id); r.code != 0 {
		t.Fatalf("reply: %d %q", r.code, r.stderr)
	}
	if l := producer.line(); l != "pong" {
		t.Fatalf("producer printed %q", l)
	}

	// Framed text and JSON lines.
	tun := mustClient(t, n.URL).Tunnel("out")
	for _, m := range []string{"line one\nline two\n.dot", "plain", "\xff\xfe"} {
		if _, err := tun.Send(ctx, []byte(m), client.SendOptions{ContentType: "text/plain"}); err != nil {
			t.Fatal(err)
		}
	}
	if r := runBin(t, nil, "", "recv", srv, "out"); r.stdout != "line one\nline two\n..dot\n.\n" {
		t.Fatalf("a message with newlines is not framed: %q", r.stdout)
	}
	if r := runBin(t, nil, "", "recv", srv, "out"); r.stdout != "plain\n" {
		t.Fatalf("a one-line message: %q", r.stdout)
	}
	r = runBin(t, nil, "", "recv", srv, "--json", "out")
	var rec map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil || rec["body_base64"] != "//4=" || rec["content_type"] != "text/plain" || rec["id"] == "" || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("recv --json: %q %v", r.stdout, err)
	}

	// A channel that never had a subscriber keeps its history: --since 0.
	if r := runBin(t, nil, "", "pub", srv, "/fresh", "first\nsecond"); r.code != 0 {
		t.Fatalf("pub: %d %q", r.code, r.stderr)
	}
	if r := runBin(t, nil, "", "sub", srv, "--since", "0", "--count", "1", "/fresh"); r.code != 0 || r.stdout != "first\nsecond\n.\n" {
		t.Fatalf("sub --since 0: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = runBin(t, nil, "", "sub", srv, "--since", "0", "--count", "1", "--json", "/fresh")
	if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil || rec["body"] != "first\nsecond" {
		t.Fatalf("sub --json: %q %v", r.stdout, err)
	}

	// inbox receive --json: one entry per line.
	for range 2 {
		runBin(t, nil, "", "inbox", "send", srv, "--from", "a", "--to", "b", "hi")
	}
	if r := runBin(t, nil, "", "inbox", "receive", srv, "--as", "b", "--json"); strings.Count(r.stdout, "\n") != 2 || !strings.HasPrefix(r.stdout, `{"type":"msg"`) {
		t.Fatalf("inbox receive --json: %q", r.stdout)
	}

	// token new: the block goes into a token file the server takes, the
	// secret works, the file holds only its hash.
	r = runBin(t, nil, "", "token", "new", "--name", "ci", "--grant", "write,read:/t/builds-*")
	secret := regexp.MustCompile(`: (pst_[A-Za-z0-9_-]{43})\n$`).FindStringSubmatch(r.stderr)
	if r.code != 0 || secret == nil || strings.Contains(r.stdout, secret[1]) || !strings.Contains(r.stdout, "secret_sha256 = ") {
		t.Fatalf("token new: %d %q %q", r.code, r.stdout, r.stderr)
	}
	f := filepath.Join(t.TempDir(), "tokens.toml")
	os.WriteFile(f, []byte(r.stdout), 0o600)
	guarded := startNode(t, func(c *node.Config) { c.TokenFile = f })
	if r := runBin(t, []string{"POSTERN_TOKEN=" + secret[1]}, "", "send", "--server", guarded.URL, "builds-1", "x"); r.code != 0 {
		t.Fatalf("send with the new token: %d %q", r.code, r.stderr)
	}
	if r := runBin(t, nil, "", "send", "--server", guarded.URL, "--token", secret[1], "other", "x"); r.code != cli.ExitDenied {
		t.Fatalf("send beyond the grant: %d %q", r.code, r.stderr)
	}
	if r := runBin(t, nil, "", "token", "new", "--name", "x", "--grant", "fly:/t/x"); r.code != cli.ExitUsage || !strings.Contains(r.stderr, `unknown action "fly"`) {
		t.Fatalf("token new with a bad grant: %d %q", r.code, r.stderr)
	}
}

// TestHelpAndCompletion (issue point 8): the help names every verb, each
// command shows examples, serve's flags come in sections, and completion
// scripts come for four shells.
func TestHelpAndCompletion(t *testing.T) {
	ctx := context.Background()
	code, out, _ := run(t, ctx, nil, "", "--help")
	for _, w := range []string{"relay", "expose", "reply", "token", "completion", "Examples:", "Exit codes", "130"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Fatalf("postern --help lacks %q: %q", w, out)
		}
	}
	for _, c := range [][]string{{"serve"}, {"send"}, {"recv"}, {"reply"}, {"pub"}, {"sub"}, {"inbox"}, {"inbox", "send"}, {"inbox", "receive"},
		{"expose"}, {"relay"}, {"token"}, {"token", "new"}, {"version"}} {
		code, out, _ := run(t, ctx, nil, "", append(c, "--help")...)
		if code != 0 || !strings.Contains(out, "Examples:\n  ") || !strings.Contains(out, "Usage:") {
			t.Errorf("postern %v --help: exit %d, no examples: %q", c, code, out)
		}
	}
	_, out, _ = run(t, ctx, nil, "", "serve", "--help")
	last := -1
	for _, section := range []string{"\nServer:", "\nLogs and shutdown:", "\nConnections and rate limits:", "\nTLS and tokens:",
		"\nTunnels (/t/):", "\nInbox (/inbox):", "\nRelay (/client/, /server/):", "\nExpose (", "\nChannels (/c/):"} {
		i := strings.Index(out, section)
		if i < last {
			t.Fatalf("serve --help: section %q missing or out of order", section)
		}
		last = i
	}
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		r := runBin(t, nil, "", "completion", shell)
		if r.code != 0 || len(r.stdout) < 500 || !strings.Contains(r.stdout, "postern") {
			t.Errorf("completion %s: exit %d, %d bytes", shell, r.code, len(r.stdout))
		}
	}
	// Completion of commands and of flags, as the shells ask for them.
	if r := runBin(t, nil, "", "__complete", "re"); !strings.Contains(r.stdout, "recv") || !strings.Contains(r.stdout, "relay") || !strings.Contains(r.stdout, "reply") {
		t.Errorf("completing 're': %q", r.stdout)
	}
	if r := runBin(t, nil, "", "__complete", "serve", "--tunnel-max"); !strings.Contains(r.stdout, "--tunnel-max-len") {
		t.Errorf("completing 'serve --tunnel-max': %q", r.stdout)
	}
}

// TestServeExplainsItself (issue point 7): one banner with the URL of
// each capability, then logs in one style; a warning when open beyond
// loopback without a token file; a port in use is one line naming
// --listen.
func TestServeExplainsItself(t *testing.T) {
	dir := t.TempDir()
	p := startServe(t, "--listen", "127.0.0.1:0", "--store", "file:"+dir)
	banner := p.banner
	for _, w := range []string{"postern ", " listening on " + p.url, "store file:" + dir, p.url + "/t/", p.url + "/inbox",
		p.url + "/c/", p.url + "/client/NAME/", p.url + "/proxy/request/NAME/", "status page  " + p.url + "/"} {
		if !strings.Contains(banner, w) {
			t.Fatalf("banner lacks %q:\n%s", w, banner)
		}
	}
	if strings.Contains(banner, "WARNING") {
		t.Fatalf("a loopback server warned:\n%s", banner)
	}
	code, logs := p.stop()
	if code != 0 {
		t.Fatalf("serve exit %d: %s", code, logs)
	}
	slogLine := regexp.MustCompile(`^time=\S+ level=[A-Z]+ msg=`)
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		if !slogLine.MatchString(l) {
			t.Errorf("a log line in another style: %q", l)
		}
	}

	open := startServe(t, "--listen", "0.0.0.0:0", "--store", "memory", "--expose-domain", "localhost")
	if !strings.Contains(open.banner, "WARNING: listening on every interface with no --token-file") || !strings.Contains(open.banner, "http://NAME.localhost:") {
		t.Fatalf("banner of an open server:\n%s", open.banner)
	}
	open.stop()
	// With --ops-listen the status page is on the ops address.
	withOps := startServe(t, "--listen", "127.0.0.1:0", "--store", "memory", "--ops-listen", "127.0.0.1:0")
	if m := regexp.MustCompile(`status page  (http://\S+)/ `).FindStringSubmatch(withOps.banner); m == nil || m[1] == withOps.url {
		t.Fatalf("banner with --ops-listen:\n%s", withOps.banner)
	}
	withOps.stop()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := runBin(t, nil, "", "serve", "--listen", ln.Addr().String(), "--store", "file:"+dir)
	if r.code != cli.ExitError || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "cannot listen on "+ln.Addr().String()+": the address is in use") || !strings.Contains(r.stderr, "--listen") {
		t.Fatalf("port in use: %d %q", r.code, r.stderr)
	}
	// JSON logs: the banner is one record among them.
	js := startServe(t, "--listen", "127.0.0.1:0", "--store", "memory", "--log-format", "json")
	_, logs = js.stop()
	for _, l := range strings.Split(strings.TrimSpace(js.banner+logs), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Errorf("not JSON: %q", l)
		}
		if rec["msg"] == "postern listening" && rec["tunnels"] != js.url+"/t/" {
			t.Errorf("the JSON banner: %q", l)
		}
	}
}

// serveProc is `postern serve` running as a process.
type serveProc struct {
	*proc
	url    string
	banner string
}

// startServe runs `postern serve` and returns once its banner is out.
func startServe(t *testing.T, args ...string) *serveProc {
	t.Helper()
	cmd := startBin(t, nil, append([]string{"serve"}, args...)...)
	p := &serveProc{proc: cmd}
	jsonURL := regexp.MustCompile(`"msg":"postern listening".*"url":"([^"]+)"`)
	ok := cmd.stderr.waitFor(cmd.exited, func(errs string) bool {
		if m := listenRE.FindStringSubmatch(errs); m != nil && strings.Contains(errs, "/metrics") {
			p.url, p.banner = "http://"+m[1], errs
			return true
		}
		if m := jsonURL.FindStringSubmatch(errs); m != nil {
			p.url, p.banner = m[1], errs
			return true
		}
		return false
	})
	if !ok {
		t.Fatalf("serve printed no banner: %s", cmd.stderr)
	}
	return p
}

// stop ends the server with SIGTERM and returns its exit code and what it
// logged after the banner.
func (p *serveProc) stop() (int, string) {
	code, _ := p.proc.stop(syscall.SIGTERM)
	return code, strings.TrimPrefix(p.stderr.String(), p.banner)
}
