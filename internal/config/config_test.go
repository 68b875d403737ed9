package config_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/node"
)

// env is an environment for Parse.
type env map[string]string

func (e env) get(k string) string { return e[k] }

// file writes a config file and returns its path.
func file(t *testing.T, toml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "postern.toml")
	if err := os.WriteFile(p, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func parse(t *testing.T, args []string, e env) (*config.Serve, error) {
	t.Helper()
	fs, c := config.ServeFlags()
	return c, fs.Parse(args, e.get)
}

// TestDefaults: nothing given, the node's defaults.
func TestDefaults(t *testing.T) {
	c, err := parse(t, nil, env{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Server, node.DefaultConfig()) {
		t.Fatalf("defaults differ from node.DefaultConfig():\n%+v\n%+v", c.Server, node.DefaultConfig())
	}
	if c.LogLevel != config.DefaultLogLevel || c.LogFormat != config.DefaultLogFormat {
		t.Fatalf("log %q %q", c.LogLevel, c.LogFormat)
	}
}

// TestPrecedence: a flag beats POSTERN_*, which beats the seed's own
// variables in their order, which beat the config file, which beats the
// default; an empty variable counts as unset.
func TestPrecedence(t *testing.T) {
	cfgFile := file(t, `
tunnel-access-token = "from-file"
tunnel-max-len = 7
listen = "127.0.0.1:7000"
inbox-expiration = "90s"
`)
	cases := []struct {
		name string
		args []string
		env  env
		want string // the tunnel access token
	}{
		{"flag", []string{"--config", cfgFile, "--tunnel-access-token", "from-flag"}, env{"POSTERN_TUNNEL_ACCESS_TOKEN": "from-postern-env", "TUNNEL_ACCESS_TOKEN": "from-seed-env"}, "from-flag"},
		{"postern env", []string{"--config", cfgFile}, env{"POSTERN_TUNNEL_ACCESS_TOKEN": "from-postern-env", "TUNNEL_ACCESS_TOKEN": "from-seed-env"}, "from-postern-env"},
		{"seed env", []string{"--config", cfgFile}, env{"TUNNEL_ACCESS_TOKEN": "from-seed-env"}, "from-seed-env"},
		{"empty env is unset", []string{"--config", cfgFile}, env{"POSTERN_TUNNEL_ACCESS_TOKEN": "", "TUNNEL_ACCESS_TOKEN": ""}, "from-file"},
		{"file", []string{"--config", cfgFile}, env{}, "from-file"},
		{"file named by the environment", nil, env{"POSTERN_CONFIG": cfgFile}, "from-file"},
		{"default", nil, env{}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parse(t, c.args, c.env)
			if err != nil {
				t.Fatal(err)
			}
			if got.Server.Tunnel.AccessToken != c.want {
				t.Fatalf("access token %q, want %q", got.Server.Tunnel.AccessToken, c.want)
			}
			// The file's other settings hold whatever source won the token.
			if c.want != "" && (got.Server.Tunnel.MaxLen != 7 || got.Server.Listen != "127.0.0.1:7000" || got.Server.Inbox.Expiration != 90*time.Second) {
				t.Fatalf("file settings lost: %d %q %v", got.Server.Tunnel.MaxLen, got.Server.Listen, got.Server.Inbox.Expiration)
			}
		})
	}
}

// TestValueForms: every kind of value in each of its forms.
func TestValueForms(t *testing.T) {
	c, err := parse(t, []string{
		"--tunnel-poll-timeout", "45", // a bare number is seconds
		"--tunnel-max-poll-timeout=1m30s",
		"--tunnel-backpressure=off",
		"--tunnel-public-ids", " a, ,b ",
		"--trusted-proxies", "10.0.0.0/8, 192.168.1.7",
		"--rate-limit-addr", "2.5",
	}, env{"POSTERN_EXPOSE_ANONYMOUS_AGENTS": "yes", "REDIS_EXPIRATION_SECONDS": "604800"})
	if err != nil {
		t.Fatal(err)
	}
	s := c.Server
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32")}
	switch {
	case s.Tunnel.PollTimeout != 45*time.Second, s.Tunnel.MaxPollTimeout != 90*time.Second:
		t.Fatalf("durations %v %v", s.Tunnel.PollTimeout, s.Tunnel.MaxPollTimeout)
	case s.Tunnel.Backpressure, !s.Expose.AnonymousAgents:
		t.Fatalf("booleans %v %v", s.Tunnel.Backpressure, s.Expose.AnonymousAgents)
	case !reflect.DeepEqual(s.Tunnel.PublicIDs, []string{"a", "b"}):
		t.Fatalf("list %q", s.Tunnel.PublicIDs)
	case !reflect.DeepEqual(s.TrustedProxies, want):
		t.Fatalf("prefixes %v", s.TrustedProxies)
	case s.RateLimit.PerAddr != 2.5, s.Inbox.Expiration != 7*24*time.Hour:
		t.Fatalf("numbers %v %v", s.RateLimit.PerAddr, s.Inbox.Expiration)
	}
}

// TestMalformedValuesAreNamed: a bad value says where it came from (the
// flag, the variable, the file and key) and what was wanted.
func TestMalformedValuesAreNamed(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  env
		file string
		want []string // every one must be in the error
	}{
		{"flag int", []string{"--tunnel-max-len", "many"}, nil, "", []string{"tunnel-max-len", `"many"`, "not an integer"}},
		{"flag duration", []string{"--tunnel-reply-ttl=soon"}, nil, "", []string{"tunnel-reply-ttl", "not a duration"}},
		{"unknown flag", []string{"--tunnel-max-lenght", "5"}, nil, "", []string{"tunnel-max-lenght"}},
		{"postern env", nil, env{"POSTERN_INBOX_MAX_LEN": "10k"}, "", []string{"POSTERN_INBOX_MAX_LEN", `"10k"`, "not an integer"}},
		{"seed env", nil, env{"TUNNEL_BACKPRESSURE": "maybe"}, "", []string{"TUNNEL_BACKPRESSURE", `"maybe"`, "not a boolean"}},
		{"env prefixes", nil, env{"POSTERN_TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"}, "", []string{"POSTERN_TRUSTED_PROXIES", `"proxy.local" is not an address or CIDR prefix`}},
		{"env number", nil, env{"POSTERN_RATE_LIMIT_ADDR": "NaN"}, "", []string{"POSTERN_RATE_LIMIT_ADDR", "not a number"}},
		{"file value", nil, nil, `channels-history-ttl = "a while"`, []string{"config file", "channels-history-ttl", "not a duration"}},
		{"file unknown key", nil, nil, `tunnel_max_len = 5`, []string{"config file", `unknown setting "tunnel_max_len"`}},
		{"file list type", nil, nil, `tunnel-public-ids = [1, 2]`, []string{"config file", "tunnel-public-ids", "lists hold strings only"}},
		{"file list comma", nil, nil, `channels-origin = ["https://a,b"]`, []string{"channels-origin", "holds a comma"}},
		{"file syntax", nil, nil, "listen = \n", []string{"config file"}},
		{"file names itself", nil, nil, `config = "other.toml"`, []string{`unknown setting "config"`}},
		{"file missing", []string{"--config", "/nonexistent/postern.toml"}, nil, "", []string{"config file", "/nonexistent/postern.toml"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := c.args
			if c.file != "" {
				args = append([]string{"--config", file(t, c.file)}, args...)
			}
			_, err := parse(t, args, c.env)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error on more than one line: %q", err)
			}
		})
	}
}

// TestEnvName: each flag's variable.
func TestEnvName(t *testing.T) {
	if got := config.EnvName("tunnel-max-len"); got != "POSTERN_TUNNEL_MAX_LEN" {
		t.Fatal(got)
	}
}

// TestNewLogger: levels and formats, and errors naming the bad one.
func TestNewLogger(t *testing.T) {
	var b strings.Builder
	log, err := config.NewLogger(&b, "warn", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	if out := b.String(); strings.Contains(out, "hidden") || !strings.Contains(out, `"msg":"shown"`) {
		t.Fatalf("%q", out)
	}
	if _, err := config.NewLogger(&b, "loud", "text"); err == nil || !strings.Contains(err.Error(), `"loud"`) {
		t.Fatalf("bad level: %v", err)
	}
	if _, err := config.NewLogger(&b, "info", "xml"); err == nil || !strings.Contains(err.Error(), `"xml"`) {
		t.Fatalf("bad format: %v", err)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRepeatedList: --acme-domain may be given many times, each a name or
// a comma list; the environment and the config file give it once.
func TestRepeatedList(t *testing.T) {
	c, err := parse(t, []string{"--acme-domain", "a.example", "--acme-domain", "b.example, c.example"}, env{"POSTERN_ACME_DOMAIN": "env.example"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.example", "b.example", "c.example"}; !reflect.DeepEqual(c.Server.ACME.Domains, want) {
		t.Fatalf("flags: %q, want %q", c.Server.ACME.Domains, want)
	}
	if c, err = parse(t, nil, env{"POSTERN_ACME_DOMAIN": "x.example,y.example"}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"x.example", "y.example"}; !reflect.DeepEqual(c.Server.ACME.Domains, want) {
		t.Fatalf("environment: %q, want %q", c.Server.ACME.Domains, want)
	}
	if c, err = parse(t, []string{"--config", file(t, `acme-domain = ["f.example", "g.example"]`)}, env{}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"f.example", "g.example"}; !reflect.DeepEqual(c.Server.ACME.Domains, want) {
		t.Fatalf("config file: %q, want %q", c.Server.ACME.Domains, want)
	}
}
