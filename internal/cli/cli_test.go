package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/certs/certstest"
	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/servertest"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postern-cli-test-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { os.RemoveAll(dir) }),
		goleak.IgnoreTopFunction(certstest.IgnoreGoroutine)) // TestServeAutomaticHTTPS's test CA
}

// run runs the command line in-process and returns its exit code and output.
func run(t *testing.T, ctx context.Context, env map[string]string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Main(ctx, args, cli.Env{
		Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb,
		Getenv: func(k string) string {
			if v, ok := env[k]; ok || k != "POSTERN_STORE" {
				return v
			}
			// A serve that is expected to fail must not leave the default
			// data directory in the source tree.
			return "memory"
		},
	})
	return code, out.String(), errb.String()
}

var listenRE = regexp.MustCompile(`postern (?:\S+ )?listening(?: on https?://|"? addr=)(\S+)`)

// serve runs `postern serve` in-process and returns its base URL once it
// logged that it listens, and a stop function that returns the exit code.
func serve(t *testing.T, env map[string]string, args ...string) (string, func() int) {
	t.Helper()
	dir := t.TempDir() // the default engine, in a directory of the test's own
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		c := cli.Main(ctx, append([]string{"serve", "--listen", "127.0.0.1:0", "--store", "file:" + dir}, args...), cli.Env{
			Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: pw,
			Getenv: func(k string) string { return env[k] },
		})
		pw.Close()
		code <- c
	}()
	sc := bufio.NewScanner(pr)
	var url string
	var logs strings.Builder
	for sc.Scan() {
		logs.WriteString(sc.Text() + "\n")
		if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
			url = "http://" + m[1]
			break
		}
	}
	if url == "" {
		cancel()
		t.Fatalf("serve did not start (exit %d): %s", <-code, logs.String())
	}
	drained := make(chan struct{})
	go func() { io.Copy(io.Discard, pr); close(drained) }()
	var once sync.Once
	var exit int
	stop := func() int {
		once.Do(func() {
			cancel()
			exit = <-code
			<-drained
			http.DefaultClient.CloseIdleConnections()
		})
		return exit
	}
	t.Cleanup(func() { stop() })
	return url, stop
}

func get(t *testing.T, url string, hdr ...string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func TestServeDrainsAndExitsZero(t *testing.T) {
	url, stop := serve(t, nil)
	if s := get(t, url+"/t/x"); s != 204 {
		t.Fatalf("GET /t/x = %d", s)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve exit code %d", code)
	}
}

func TestServeSeedEnvironment(t *testing.T) {
	url, _ := serve(t, map[string]string{"TUNNEL_ACCESS_TOKEN": "seedtok", "TUNNEL_PUBLIC_IDS": "demo, other ,"})
	if s := get(t, url+"/t/x"); s != 403 {
		t.Fatalf("without token: %d", s)
	}
	if s := get(t, url+"/t/x", "Authorization", "Bearer seedtok"); s != 204 {
		t.Fatalf("with seed token: %d", s)
	}
	if s := get(t, url+"/t/other"); s != 204 {
		t.Fatalf("public id: %d", s)
	}
}

func TestServePrecedence(t *testing.T) {
	env := map[string]string{"TUNNEL_ACCESS_TOKEN": "alias", "POSTERN_TUNNEL_ACCESS_TOKEN": "postern"}
	url, _ := serve(t, env)
	if s := get(t, url+"/t/x", "Authorization", "Bearer alias"); s != 403 {
		t.Fatalf("alias beat POSTERN_*: %d", s)
	}
	if s := get(t, url+"/t/x", "Authorization", "Bearer postern"); s != 204 {
		t.Fatalf("POSTERN_* token refused: %d", s)
	}
	url, _ = serve(t, env, "--tunnel-access-token", "flag")
	if s := get(t, url+"/t/x", "Authorization", "Bearer flag"); s != 204 {
		t.Fatalf("flag token refused: %d", s)
	}
}

func TestServeEmptyTokenIsUnset(t *testing.T) {
	// The original turned auth on with a token nobody could match.
	url, _ := serve(t, map[string]string{"TUNNEL_ACCESS_TOKEN": "", "TUNNEL_PUBLIC_IDS": ""})
	if s := get(t, url+"/t/x"); s != 204 {
		t.Fatalf("empty token turned auth on: %d", s)
	}
}

func TestServeRejectsBadSettings(t *testing.T) {
	cases := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"TUNNEL_MAXLEN": "abc"}, nil, "TUNNEL_MAXLEN"},
		{map[string]string{"TUNNEL_MAX_POLL_TIMEOUT": "soon"}, nil, "TUNNEL_MAX_POLL_TIMEOUT"},
		{map[string]string{"TUNNEL_BACKPRESSURE": "maybe"}, nil, "TUNNEL_BACKPRESSURE"},
		{nil, []string{"--tunnel-max-len", "1.5"}, "tunnel-max-len"},
		{nil, []string{"--tunnel-max-len", "0"}, "max length"},
		{nil, []string{"--tunnel-public-ids", "bad id"}, "bad id"},
		{nil, []string{"--log-level", "loud"}, "log level"},
		{nil, []string{"--store", "floppy:"}, "unknown store"},
		{nil, []string{"--no-such-flag"}, "no-such-flag"},
		{nil, []string{"--token-file", "does-not-exist.toml"}, "token file"},
		{nil, []string{"--rate-limit-addr", "fast"}, "rate-limit-addr"},
		{map[string]string{"POSTERN_TRUSTED_PROXIES": "10.0.0.0/8, proxy"}, nil, "POSTERN_TRUSTED_PROXIES"},
		{map[string]string{"POSTERN_RELAY_BLOCK_SIZE": "0"}, nil, "relay block size"},
		{map[string]string{"POSTERN_RELAY_INACTIVE_REQUEST_TIMEOUT": "soon"}, nil, "POSTERN_RELAY_INACTIVE_REQUEST_TIMEOUT"},
		{nil, []string{"--relay-inactive-backend-timeout", "0"}, "inactive backend timeout"},
	}
	for _, c := range cases {
		code, _, stderr := run(t, context.Background(), c.env, "", append([]string{"serve", "--listen", "127.0.0.1:0"}, c.args...)...)
		if code == 0 || !strings.Contains(stderr, c.want) || strings.Count(strings.TrimSpace(stderr), "\n") > 2 {
			t.Errorf("serve %v %v: exit %d, stderr %q; want a failure naming %q", c.env, c.args, code, stderr, c.want)
		}
	}
}

func TestServeTokenFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tokens.toml")
	os.WriteFile(f, []byte("[[token]]\nname = \"ci\"\nsecret = \"ci-secret-0123456789\"\n[[token.grant]]\nactions = [\"read\"]\npaths = [\"/t/*\"]\n"), 0o600)
	url, _ := serve(t, nil, "--token-file", f)
	if s := get(t, url+"/t/x"); s != 403 {
		t.Fatalf("without token: %d", s)
	}
	if s := get(t, url+"/t/x", "Authorization", "Bearer ci-secret-0123456789"); s != 204 {
		t.Fatalf("with scoped token: %d", s)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[[token]]\nname = \"x\"\n"), 0o600)
	code, _, stderr := run(t, context.Background(), nil, "", "serve", "--listen", "127.0.0.1:0", "--token-file", bad)
	if code == 0 || !strings.Contains(stderr, "bad.toml") || !strings.Contains(stderr, "secret") {
		t.Fatalf("bad token file: exit %d, %q", code, stderr)
	}
}

func TestServeConfigFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "postern.toml")
	os.WriteFile(f, []byte(`# a comment
tunnel-access-token = "fromfile"
tunnel-public-ids = ["demo", "other"]
tunnel-max-len = 5
tunnel-reply-ttl = "90s"
`), 0o600)
	url, _ := serve(t, nil, "--config", f)
	if s := get(t, url+"/t/x", "Authorization", "Bearer fromfile"); s != 204 {
		t.Fatalf("token from config file: %d", s)
	}
	if s := get(t, url+"/t/other"); s != 204 {
		t.Fatalf("public id list from config file: %d", s)
	}
	// The environment beats the file; POSTERN_CONFIG names the file.
	url, _ = serve(t, map[string]string{"POSTERN_CONFIG": f, "TUNNEL_ACCESS_TOKEN": "fromenv"})
	if s := get(t, url+"/t/x", "Authorization", "Bearer fromfile"); s != 403 {
		t.Fatalf("file beat the environment: %d", s)
	}
	if s := get(t, url+"/t/x", "Authorization", "Bearer fromenv"); s != 204 {
		t.Fatalf("environment token: %d", s)
	}
	for body, want := range map[string]string{
		"tunnel-max-lenn = 5\n":       `unknown setting "tunnel-max-lenn"`,
		"tunnel-max-len = \"many\"\n": "tunnel-max-len",
		"[tunnel]\nmax-len = 5\n":     `unknown setting "tunnel"`,
		"listen = \n":                 "postern.toml",
	} {
		os.WriteFile(f, []byte(body), 0o600)
		code, _, stderr := run(t, context.Background(), nil, "", "serve", "--listen", "127.0.0.1:0", "--config", f)
		if code == 0 || !strings.Contains(stderr, want) || strings.Count(strings.TrimSpace(stderr), "\n") > 1 {
			t.Errorf("config %q: exit %d, stderr %q; want a one-line failure naming %q", body, code, stderr, want)
		}
	}
}

func TestServeRateLimit(t *testing.T) {
	url, _ := serve(t, nil, "--rate-limit-addr", "0.5", "--rate-limit-addr-burst", "2")
	for i := range 2 {
		if s := get(t, url+"/t/x"); s != 204 {
			t.Fatalf("request %d: %d", i, s)
		}
	}
	res, err := http.Get(url + "/t/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 429 || res.Header.Get("Retry-After") != "2" || !strings.HasPrefix(string(body), "rate limit exceeded") {
		t.Fatalf("over the limit: %d Retry-After %q %q", res.StatusCode, res.Header.Get("Retry-After"), body)
	}
	if s := get(t, url+"/healthz"); s != 200 {
		t.Fatalf("healthz limited: %d", s)
	}
}

// TestSampleConfigs keeps the commented samples in deploy/ true: both load,
// and the config sample names every flag of serve.
func TestSampleConfigs(t *testing.T) {
	sample, err := os.ReadFile("../../deploy/postern.toml")
	if err != nil {
		t.Fatal(err)
	}
	fs, _ := config.ServeFlags()
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != "config" && !regexp.MustCompile(`(?m)^#? ?`+regexp.QuoteMeta(f.Name)+` = `).Match(sample) {
			t.Errorf("deploy/postern.toml does not mention %s", f.Name)
		}
	})
	url, _ := serve(t, nil, "--config", "../../deploy/postern.toml", "--token-file", "../../deploy/tokens.toml")
	if s := get(t, url+"/t/builds-1"); s != 403 {
		t.Fatalf("sample token file: tunnel without a token: %d", s)
	}
	if s := get(t, url+"/healthz"); s != 200 {
		t.Fatalf("healthz: %d", s)
	}
}

func TestSendRecv(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	ctx := context.Background()
	srv := []string{"--server", n.URL}

	code, out, _ := run(t, ctx, nil, "", append([]string{"send"}, append(srv, "jobs", "first")...)...)
	if code != 0 || !regexp.MustCompile(`^\d+-\d+\n$`).MatchString(out) {
		t.Fatalf("send: exit %d, out %q", code, out)
	}
	// From standard input, flags after the arguments, content type kept.
	code, _, _ = run(t, ctx, nil, `{"n":2}`, "send", "jobs", "-", "--server", n.URL, "--content-type", "application/json")
	if code != 0 {
		t.Fatalf("send from stdin: exit %d", code)
	}
	code, out, _ = run(t, ctx, nil, "", append([]string{"recv"}, append(srv, "jobs")...)...)
	if code != 0 || out != "first\n" {
		t.Fatalf("recv: exit %d, out %q", code, out)
	}
	code, out, _ = run(t, ctx, nil, "", append([]string{"recv", "--ack"}, append(srv, "jobs")...)...)
	if code != 0 || out != "{\"n\":2}\n" {
		t.Fatalf("recv --ack: exit %d, out %q", code, out)
	}
	// --ack acknowledged it: nothing is pending.
	if l, _ := mustClient(t, n.URL).Tunnel("jobs").Len(ctx); l != 0 {
		t.Fatalf("after recv --ack: len %d", l)
	}
	code, out, stderr := run(t, ctx, nil, "", append([]string{"recv", "--wait", "0"}, append(srv, "jobs")...)...)
	if code != cli.ExitEmpty || out != "" || !strings.Contains(stderr, "no message") {
		t.Fatalf("recv on empty: exit %d, out %q, stderr %q", code, out, stderr)
	}
}

func mustClient(t *testing.T, url string) *client.Client {
	t.Helper()
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSendWaitReply(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	ctx := context.Background()
	done := make(chan string, 1)
	go func() {
		_, out, errs := run(t, ctx, nil, "", "send", "--server", n.URL, "--wait-reply", "20s", "rpc", "ping")
		done <- out + errs
	}()
	tun := mustClient(t, n.URL).Tunnel("rpc")
	m, ok, err := tun.Receive(ctx, client.ReceiveOptions{Pending: true, Wait: 20 * time.Second})
	if err != nil || !ok || string(m.Body) != "ping" {
		t.Fatalf("receive: %q %v %v", m.Body, ok, err)
	}
	if err := tun.Reply(ctx, m.ID, []byte("pong"), "text/plain"); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got != "pong\n" {
		t.Fatalf("send --wait-reply printed %q", got)
	}
}

func TestRecvFollow(t *testing.T) {
	n := servertest.Start(t, servertest.Config())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- cli.Main(ctx, []string{"recv", "--follow", "--ack", "--server", n.URL, "feed"}, cli.Env{
			Stdin: strings.NewReader(""), Stdout: pw, Stderr: io.Discard, Getenv: func(string) string { return "" },
		})
		pw.Close()
	}()
	tun := mustClient(t, n.URL).Tunnel("feed")
	sc := bufio.NewScanner(pr)
	for _, want := range []string{"one", "two", "three"} {
		if _, err := tun.Send(context.Background(), []byte(want), client.SendOptions{}); err != nil {
			t.Fatal(err)
		}
		if !sc.Scan() || sc.Text() != want {
			t.Fatalf("follow printed %q, want %q", sc.Text(), want)
		}
	}
	cancel()
	go io.Copy(io.Discard, pr)
	if c := <-code; c != 0 {
		t.Fatalf("interrupted follow exit %d", c)
	}
}

func TestUsage(t *testing.T) {
	ctx := context.Background()
	if code, out, _ := run(t, ctx, nil, "", "help"); code != 0 || !strings.Contains(out, "serve") || !strings.Contains(out, "recv") {
		t.Fatalf("help: %d %q", code, out)
	}
	if code, out, _ := run(t, ctx, nil, "", "serve", "--help"); code != 0 || !strings.Contains(out, "POSTERN_TUNNEL_MAX_LEN, TUNNEL_MAXLEN") {
		t.Fatalf("serve --help: %d %q", code, out)
	}
	if code, out, _ := run(t, ctx, nil, "", "version"); code != 0 || !strings.HasPrefix(out, "postern ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, _, errs := run(t, ctx, nil, "", "frobnicate"); code != cli.ExitUsage || !strings.Contains(errs, "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errs)
	}
	if code, _, errs := run(t, ctx, nil, "", "send"); code != cli.ExitUsage || !strings.Contains(errs, "TUNNEL") {
		t.Fatalf("send without args: %d %q", code, errs)
	}
	if code, _, errs := run(t, ctx, nil, "", "recv", "--server", "ftp://x", "t"); code != cli.ExitUsage || !strings.Contains(errs, "http") {
		t.Fatalf("recv with bad server: %d %q", code, errs)
	}
	if code, _, _ := run(t, ctx, nil, ""); code != cli.ExitUsage {
		t.Fatalf("no args: %d", code)
	}
}

func TestClientErrorsAreOneLine(t *testing.T) {
	cfg := servertest.Config()
	cfg.Tunnel.AccessToken = "tok"
	n := servertest.Start(t, cfg)
	code, _, errs := run(t, context.Background(), nil, "", "send", "--server", n.URL, "t", "x")
	if code != cli.ExitDenied || strings.TrimSpace(errs) != `postern send: 403: this action needs a token granted "write" on /t/t (--token or POSTERN_TOKEN)` {
		t.Fatalf("send without token: %d %q", code, errs)
	}
	code, _, errs = run(t, context.Background(), nil, "", "recv", "--server", n.URL, "--token", "nope", "t")
	if code != cli.ExitDenied || strings.TrimSpace(errs) != `postern recv: 403: the token given is not granted "read" on /t/t (check --token or POSTERN_TOKEN, and the server's --token-file)` {
		t.Fatalf("recv with a wrong token: %d %q", code, errs)
	}
	code, _, _ = run(t, context.Background(), map[string]string{"TUNNEL_ACCESS_TOKEN": "tok"}, "", "send", "--server", n.URL, "t", "x")
	if code != 0 {
		t.Fatalf("send with TUNNEL_ACCESS_TOKEN: %d", code)
	}
}
