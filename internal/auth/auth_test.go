package auth_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const sample = `
# CI may produce to build tunnels and read their replies.
[[token]]
name = "ci"
secret = "ci-secret-0123456789"
[[token.grant]]
actions = ["write", "read"]
paths = ["/t/builds-*"]

[[token]]
name = "robot"
secret_sha256 = "%s"
[[token.grant]]
actions = ["serve"]
paths = ["/relay/robot-1", "/expose/robot-*"]
[[token.grant]]
actions = ["*"]
paths = ["/inbox/robot"]

[[anonymous.grant]]
actions = ["read"]
paths = ["/c/public/*"]
`

func policy(t *testing.T) *auth.Policy {
	t.Helper()
	sum := sha256.Sum256([]byte("robot-secret-0123456789"))
	p, err := auth.Parse([]byte(strings.Replace(sample, "%s", hex.EncodeToString(sum[:]), 1)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAllow(t *testing.T) {
	p := policy(t)
	if !p.Enabled() || p.Len() != 2 {
		t.Fatalf("Enabled %v, Len %d", p.Enabled(), p.Len())
	}
	cases := []struct {
		auth, query string
		action      auth.Action
		resource    string
		want        bool
	}{
		{"Bearer ci-secret-0123456789", "", auth.Write, "/t/builds-42", true},
		{"bearer ci-secret-0123456789", "", auth.Read, "/t/builds-", true},
		{"Bearer ci-secret-0123456789", "", auth.Write, "/t/deploys", false},
		{"Bearer ci-secret-0123456789", "", auth.Serve, "/t/builds-42", false},
		{"Bearer robot-secret-0123456789", "", auth.Serve, "/relay/robot-1", true},
		{"Bearer robot-secret-0123456789", "", auth.Serve, "/relay/robot-10", false}, // exact path
		{"Bearer robot-secret-0123456789", "", auth.Serve, "/expose/robot-arm", true},
		{"Bearer robot-secret-0123456789", "", auth.Call, "/inbox/robot", true},
		{"", "robot-secret-0123456789", auth.Read, "/inbox/robot", true}, // query parameter
		{"Bearer wrong-secret-0123456789", "", auth.Write, "/t/builds-1", false},
		{"XBearer ci-secret-0123456789", "", auth.Write, "/t/builds-1", false}, // unanchored scheme
		{"", "", auth.Read, "/c/public/news", true},                            // anonymous
		{"", "", auth.Write, "/c/public/news", false},
		{"", "", auth.Read, "/c/private", false},
	}
	for _, c := range cases {
		target := "/x"
		if c.query != "" {
			target += "?" + auth.QueryParam + "=" + c.query
		}
		r := httptest.NewRequest("GET", target, nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		if got := p.Allow(r, c.action, c.resource); got != c.want {
			t.Errorf("Allow(%q %q, %s, %s) = %v, want %v", c.auth, c.query, c.action, c.resource, got, c.want)
		}
	}
	r := httptest.NewRequest("GET", "/x", nil)
	r.Header.Set("Authorization", "Bearer ci-secret-0123456789")
	if tok, ok := p.Identify(r); !ok || tok.Name != "ci" {
		t.Fatalf("Identify = %v, %v", tok, ok)
	}
}

func TestNilPolicyIsDisabled(t *testing.T) {
	var p *auth.Policy
	r := httptest.NewRequest("GET", "/x", nil)
	if p.Enabled() || p.Allow(r, auth.Read, "/t/x") || p.Len() != 0 {
		t.Fatal("nil policy must be disabled and allow nothing")
	}
	if _, ok := p.Lookup("anything"); ok {
		t.Fatal("nil policy found a token")
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]string{
		`[[token]]
secret = "0123456789abcdef"`: "name is missing",
		`[[token]]
name = "a"`: "secret or secret_sha256 is missing",
		`[[token]]
name = "a"
secret = "short"`: "shorter than 16",
		`[[token]]
name = "a"
secret_sha256 = "abc"`: "64 hex digits",
		`[[token]]
name = "a"
secret = "0123456789abcdef"
[[token.grant]]
actions = ["fly"]
paths = ["/t/x"]`: `unknown action "fly"`,
		`[[token]]
name = "a"
secret = "0123456789abcdef"
[[token.grant]]
actions = ["read"]
paths = ["t/x"]`: "must start with /",
		`[[token]]
name = "a"
secret = "0123456789abcdef"
[[token.grant]]
actions = ["read"]
paths = ["/t/*x"]`: "only at its end",
		`[[token]]
name = "a"
secret = "0123456789abcdef"
[[token]]
name = "a"
secret = "0123456789abcdeg"`: "name used twice",
		`[[token]]
name = "a"
secret = "0123456789abcdef"
[[token]]
name = "b"
secret = "0123456789abcdef"`: "same secret",
		`[[token]]
name = "a"
secrets = "0123456789abcdef"`: "unknown setting",
		`[[token]
name = "a"`: "",
	}
	for in, want := range cases {
		_, err := auth.Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q) = %v, want a one-line error containing %q", in, err, want)
		}
	}
}

func TestParseBearer(t *testing.T) {
	cases := map[string]string{
		"Bearer abc":    "abc",
		"bearer abc  ":  "abc",
		"BEARER   abc":  "abc",
		"Bearer":        "",
		"Bearer ":       "",
		"Bearer a b":    "",
		"Basic abc":     "",
		"XBearer abc":   "",
		" Bearer abc":   "",
		"Bearer\tabc":   "abc", // a lenient backend reads it so: it must be found to be removed
		"Bearer abc\t ": "abc",
	}
	for in, want := range cases {
		got, ok := auth.ParseBearer(in)
		if got != want || ok != (want != "") {
			t.Errorf("ParseBearer(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func FuzzParseBearer(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer  x ", "Basic Zm9v", "", "Bearer", "Bearer a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		tok, ok := auth.ParseBearer(h)
		if ok && (tok == "" || strings.ContainsAny(tok, " \t")) {
			t.Fatalf("ParseBearer(%q) = %q", h, tok)
		}
		if !ok && tok != "" {
			t.Fatalf("ParseBearer(%q) returned %q with !ok", h, tok)
		}
	})
}

func FuzzParse(f *testing.F) {
	f.Add(sample)
	f.Add("[[token]]\nname=\"a\"\nsecret=\"0123456789abcdef\"\n")
	f.Add("[[anonymous.grant]]\nactions=[\"*\"]\npaths=[\"/*\"]\n")
	f.Add(rulesSample)
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		p, err := auth.Parse([]byte(in))
		if err != nil {
			if p != nil {
				t.Fatal("policy returned with an error")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		r := httptest.NewRequest("GET", "/x", nil)
		r.Header.Set("Authorization", "Bearer 0123456789abcdef")
		p.Allow(r, auth.Read, "/t/x") // must not panic
	})
}
