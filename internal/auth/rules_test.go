package auth_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/postern/postern/internal/auth"
)

const rulesSample = `
[[token]]
name = "guarded"
secret = "guarded-secret-0123456789"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/private-*"]
require = ["basic-auth"]
forbid = ["response-header"]
[[token.grant]]
actions = ["serve"]
paths = ["/expose/*"]
require = ["allow-cidr"]

[[anonymous.grant]]
actions = ["serve"]
paths = ["/expose/open"]
forbid = ["basic-auth"]
`

// TestGrantConditions: a grant with require and forbid allows serve only
// to an agent whose access rules meet them, says which condition failed,
// and never allows through a plain Allow when it requires something.
func TestGrantConditions(t *testing.T) {
	p, err := auth.Parse([]byte(rulesSample))
	if err != nil {
		t.Fatal(err)
	}
	b, c, h := auth.BasicAuth, auth.AllowCIDR, auth.ResponseHeader
	cases := []struct {
		token, resource string
		used            []auth.Rule
		want            bool
		unmet           string
	}{
		{"guarded-secret-0123456789", "/expose/private-a", []auth.Rule{b}, true, ""},
		{"guarded-secret-0123456789", "/expose/private-a", nil, false, "requires basic-auth"},
		{"guarded-secret-0123456789", "/expose/private-a", []auth.Rule{b, h}, false, "forbids response-header"},
		{"guarded-secret-0123456789", "/expose/private-a", []auth.Rule{c, h}, true, ""}, // the second grant
		{"guarded-secret-0123456789", "/expose/shop", []auth.Rule{c}, true, ""},
		{"guarded-secret-0123456789", "/expose/shop", []auth.Rule{b}, false, "requires allow-cidr"},
		{"", "/expose/open", nil, true, ""},
		{"", "/expose/open", []auth.Rule{b}, false, "forbids basic-auth"},
		{"", "/expose/shop", []auth.Rule{c}, false, ""},
		{"guarded-secret-0123456789", "/expose/open", []auth.Rule{b}, false, "forbids basic-auth"},
	}
	for _, tc := range cases {
		r := httptest.NewRequest("GET", "/agent", nil)
		if tc.token != "" {
			r.Header.Set("Authorization", "Bearer "+tc.token)
		}
		ok, unmet := p.AllowUsing(r, auth.Serve, tc.resource, tc.used)
		if ok != tc.want || unmet != tc.unmet {
			t.Errorf("AllowUsing(%q, %s, %v) = %v %q, want %v %q", tc.token, tc.resource, tc.used, ok, unmet, tc.want, tc.unmet)
		}
	}
	r := httptest.NewRequest("GET", "/agent", nil)
	r.Header.Set("Authorization", "Bearer guarded-secret-0123456789")
	if p.Allow(r, auth.Serve, "/expose/private-a") || p.Allow(r, auth.Serve, "/expose/shop") {
		t.Error("Allow counted a grant whose required rules were not used")
	}
	if !p.Allow(httptest.NewRequest("GET", "/agent", nil), auth.Serve, "/expose/open") {
		t.Error("Allow refused a grant whose only condition forbids a rule")
	}
}

func TestGrantConditionErrors(t *testing.T) {
	grant := func(body string) string {
		return "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\n[[token.grant]]\n" + body
	}
	cases := map[string]string{
		grant(`actions = ["serve"]
paths = ["/expose/x"]
require = ["password"]`): `unknown access rule "password"`,
		grant(`actions = ["serve"]
paths = ["/expose/x"]
require = ["basic-auth"]
forbid = ["BASIC-AUTH"]`): `"basic-auth" is both required and forbidden`,
		grant(`actions = ["serve", "call"]
paths = ["/expose/x"]
require = ["basic-auth"]`): `may name only the action "serve" and paths under /expose/`,
		grant(`actions = ["serve"]
paths = ["/relay/x"]
forbid = ["allow-cidr"]`): `may name only the action "serve" and paths under /expose/`,
	}
	for in, want := range cases {
		if _, err := auth.Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want %q", in, err, want)
		}
	}
}
