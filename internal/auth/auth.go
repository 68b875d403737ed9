// Package auth owns postern's scoped tokens: which bearer tokens may take
// which actions on which resources, across every capability. It is the one
// scheme postern adds to the seeds' own (tunnel tokens and signatures,
// signed brickchain registrations), which the capabilities keep for
// compatibility and combine with it.
//
// A resource is named by a path in one namespace per capability:
//
//	/t/<tunnel>        tunnels: read (consume, status, length, replies), write (produce, ack, reply, clear)
//	/inbox/<actor>     inbox: write (send as <actor>), read (receive <actor>'s messages)
//	/c/<channel path>  channels: read (subscribe), write (publish); the channel path keeps its leading "/"
//	/relay/<name>      relay: serve (be backend <name>), call (send user requests to it)
//	/expose/<name>     expose: serve (claim agent name <name>), call (send user requests to it)
//	/tcp/<port>        expose: serve (a raw TCP agent gets public port <port>)
//	/tls/<name>        expose: serve (TLS for NAME.<expose domain> is passed through to agent <name>)
//	/ops/<endpoint>    operations: ops (/ops/metrics: /metrics; /ops/nodes: /ops/nodes;
//	                   /ops/status: the status page and /_postern/status)
//
// A grant names actions and paths; a path ending in "*" is a prefix
// ("/t/builds-*", "/c/*"), any other path is exact. A grant of serve on
// /expose/ paths may also require or forbid the access rules an agent asks
// the server to enforce in front of its service (see Rule). Tokens are matched by
// the SHA-256 of the presented secret, so lookups take the same time
// whatever the secret, and the file may hold hashes instead of secrets.
package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// Action is what a request wants to do with a resource.
type Action string

// The actions a grant may name; "*" in a file means all of them.
const (
	Read  Action = "read"
	Write Action = "write"
	Serve Action = "serve"
	Call  Action = "call"
	// Ops reads the node's operational endpoints (resources /ops/...).
	Ops Action = "ops"
)

var allActions = []Action{Read, Write, Serve, Call, Ops}

// QueryParam is the query parameter that may carry a token where a client
// cannot set headers (browsers opening websockets or event streams).
const QueryParam = "access_token"

// Rule is an access rule an expose agent may ask the server to enforce in
// front of its service. A grant may require or forbid rules.
type Rule string

// The access rules.
const (
	// BasicAuth: users must give a user name and password (HTTP basic auth).
	BasicAuth Rule = "basic-auth"
	// AllowCIDR: only users from listed address ranges are served.
	AllowCIDR Rule = "allow-cidr"
	// ResponseHeader: headers the server adds to every answer.
	ResponseHeader Rule = "response-header"
)

var allRules = []Rule{BasicAuth, AllowCIDR, ResponseHeader}

// Grant allows Actions on Paths. With Require or Forbid it is conditional:
// it allows only a request that uses every rule of Require and none of
// Forbid (Policy.AllowUsing); Allow counts a request as using none.
type Grant struct {
	Actions []Action
	Paths   []string
	Require []Rule
	Forbid  []Rule
}

// unmet is the first condition of g that a request using used fails, as
// "requires R" or "forbids R", or "".
func (g Grant) unmet(used []Rule) string {
	for _, r := range g.Require {
		if !slices.Contains(used, r) {
			return "requires " + string(r)
		}
	}
	for _, r := range g.Forbid {
		if slices.Contains(used, r) {
			return "forbids " + string(r)
		}
	}
	return ""
}

// names reports whether g names action a on resource, whatever its
// conditions.
func (g Grant) names(a Action, resource string) bool {
	if !slices.Contains(g.Actions, a) {
		return false
	}
	for _, p := range g.Paths {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if strings.HasPrefix(resource, prefix) {
				return true
			}
		} else if p == resource {
			return true
		}
	}
	return false
}

// Token is one configured token. Its Name appears in logs and metrics; the
// secret never does.
type Token struct {
	Name   string
	Grants []Grant
}

// Allows reports whether t may take action a on resource.
func (t *Token) Allows(a Action, resource string) bool {
	return t != nil && allows(t.Grants, a, resource)
}

func allows(gs []Grant, a Action, resource string) bool {
	ok, _ := allowsUsing(gs, a, resource, nil)
	return ok
}

// allowsUsing reports whether a grant of gs allows a on resource to a
// request using the rules used; when none does but one names a and
// resource, unmet is the first such grant's unmet condition.
func allowsUsing(gs []Grant, a Action, resource string, used []Rule) (ok bool, unmet string) {
	for _, g := range gs {
		if !g.names(a, resource) {
			continue
		}
		u := g.unmet(used)
		if u == "" {
			return true, ""
		}
		if unmet == "" {
			unmet = u
		}
	}
	return false, unmet
}

// Policy is a set of tokens plus what anonymous requests may do. The nil
// Policy is disabled: it allows nothing and Enabled reports false, so
// capabilities fall back to their seed's behaviour.
type Policy struct {
	byHash    map[[sha256.Size]byte]*Token
	anonymous []Grant
}

// Enabled reports whether a policy is configured.
func (p *Policy) Enabled() bool { return p != nil }

// Len reports how many tokens the policy holds.
func (p *Policy) Len() int {
	if p == nil {
		return 0
	}
	return len(p.byHash)
}

// Lookup returns the token whose secret is secret.
func (p *Policy) Lookup(secret string) (*Token, bool) {
	if p == nil || secret == "" {
		return nil, false
	}
	t, ok := p.byHash[sha256.Sum256([]byte(secret))]
	return t, ok
}

// Identify returns the configured token r presents, if any: the first
// one the policy knows among those Find sees.
func (p *Policy) Identify(r *http.Request) (*Token, bool) {
	if p == nil {
		return nil, false
	}
	return FindIn(r).Token(p)
}

// Allow reports whether r may take action a on resource: anonymous grants
// first, then the grants of the token r presents.
func (p *Policy) Allow(r *http.Request, a Action, resource string) bool {
	ok, _ := p.AllowUsing(r, a, resource, nil)
	return ok
}

// AllowUsing is Allow for a request that uses the access rules used
// (an expose agent's handshake): a grant with conditions counts only when
// they are met. When no grant allows but one names a on resource, unmet
// says why it does not ("requires basic-auth", "forbids allow-cidr").
func (p *Policy) AllowUsing(r *http.Request, a Action, resource string, used []Rule) (ok bool, unmet string) {
	if p == nil {
		return false, ""
	}
	ok, unmet = allowsUsing(p.anonymous, a, resource, used)
	if ok {
		return true, ""
	}
	if t, found := p.Identify(r); found {
		ok, u := allowsUsing(t.Grants, a, resource, used)
		if ok {
			return true, ""
		}
		if unmet == "" {
			unmet = u
		}
	}
	return false, unmet
}

// ParseBearer returns the token of an "Authorization: Bearer <token>" value.
// The scheme is matched in any case and must start the value; the token is
// what follows the spaces (or tabs) after it, with trailing ones removed.
func ParseBearer(h string) (string, bool) {
	i := strings.IndexAny(h, " \t")
	if i < 0 || !strings.EqualFold(h[:i], "Bearer") {
		return "", false
	}
	tok := strings.Trim(h[i:], " \t")
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", false
	}
	return tok, true
}

// file is the token file's shape.
type file struct {
	Token     []fileToken `toml:"token"`
	Anonymous struct {
		Grant []fileGrant `toml:"grant"`
	} `toml:"anonymous"`
}

type fileToken struct {
	Name         string      `toml:"name"`
	Secret       string      `toml:"secret"`
	SecretSHA256 string      `toml:"secret_sha256"`
	Grant        []fileGrant `toml:"grant"`
}

type fileGrant struct {
	Actions []string `toml:"actions"`
	Paths   []string `toml:"paths"`
	Require []string `toml:"require"`
	Forbid  []string `toml:"forbid"`
}

// Load reads a token file.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	return p, nil
}

// Parse reads a token file's contents (TOML):
//
//	[[token]]
//	name = "ci"
//	secret_sha256 = "<hex SHA-256 of the secret>"   # or: secret = "..."
//	[[token.grant]]
//	actions = ["write"]
//	paths = ["/t/builds-*"]
//
//	[[anonymous.grant]]
//	actions = ["read"]
//	paths = ["/c/public/*"]
//
// A grant of only "serve" on only /expose/ paths may add require = [...]
// and forbid = [...], naming access rules (basic-auth, allow-cidr,
// response-header): it then lets an agent claim a name only when it asks
// for every rule required and none forbidden.
func Parse(data []byte) (*Policy, error) {
	var f file
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, errors.New(oneLine(err.Error()))
	}
	if un := md.Undecoded(); len(un) > 0 {
		return nil, fmt.Errorf("unknown setting %q", un[0].String())
	}
	p := &Policy{byHash: make(map[[sha256.Size]byte]*Token)}
	names := make(map[string]bool)
	for i, ft := range f.Token {
		where := fmt.Sprintf("token #%d", i+1)
		if ft.Name != "" {
			where = fmt.Sprintf("token %q", ft.Name)
		}
		if ft.Name == "" {
			return nil, fmt.Errorf("%s: name is missing", where)
		}
		if names[ft.Name] {
			return nil, fmt.Errorf("%s: name used twice", where)
		}
		names[ft.Name] = true
		var h [sha256.Size]byte
		switch {
		case ft.Secret != "" && ft.SecretSHA256 != "":
			return nil, fmt.Errorf("%s: give secret or secret_sha256, not both", where)
		case ft.Secret != "":
			if len(ft.Secret) < 16 {
				return nil, fmt.Errorf("%s: secret is shorter than 16 characters", where)
			}
			if strings.ContainsAny(ft.Secret, " \t\r\n") {
				return nil, fmt.Errorf("%s: secret contains white space", where)
			}
			h = sha256.Sum256([]byte(ft.Secret))
		case ft.SecretSHA256 != "":
			b, err := hex.DecodeString(ft.SecretSHA256)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("%s: secret_sha256 must be 64 hex digits", where)
			}
			copy(h[:], b)
		default:
			return nil, fmt.Errorf("%s: secret or secret_sha256 is missing", where)
		}
		if _, dup := p.byHash[h]; dup {
			return nil, fmt.Errorf("%s: same secret as another token", where)
		}
		gs, err := grants(ft.Grant)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		p.byHash[h] = &Token{Name: ft.Name, Grants: gs}
	}
	if p.anonymous, err = grants(f.Anonymous.Grant); err != nil {
		return nil, fmt.Errorf("anonymous: %w", err)
	}
	return p, nil
}

func grants(fgs []fileGrant) ([]Grant, error) {
	var out []Grant
	var err error
	for i, fg := range fgs {
		var g Grant
		if len(fg.Actions) == 0 {
			return nil, fmt.Errorf("grant #%d: actions are missing", i+1)
		}
		for _, a := range fg.Actions {
			switch act := Action(strings.ToLower(a)); {
			case act == "*":
				g.Actions = append(g.Actions, allActions...)
			case slices.Contains(allActions, act):
				g.Actions = append(g.Actions, act)
			default:
				return nil, fmt.Errorf("grant #%d: unknown action %q (want read, write, serve, call, ops or *)", i+1, a)
			}
		}
		if len(fg.Paths) == 0 {
			return nil, fmt.Errorf("grant #%d: paths are missing", i+1)
		}
		for _, p := range fg.Paths {
			if !strings.HasPrefix(p, "/") {
				return nil, fmt.Errorf("grant #%d: path %q must start with /", i+1, p)
			}
			if star := strings.IndexByte(p, '*'); star >= 0 && star != len(p)-1 {
				return nil, fmt.Errorf("grant #%d: path %q may hold * only at its end", i+1, p)
			}
		}
		g.Paths = fg.Paths
		if g.Require, g.Forbid, err = conditions(fg, g); err != nil {
			return nil, fmt.Errorf("grant #%d: %w", i+1, err)
		}
		out = append(out, g)
	}
	return out, nil
}

// conditions reads a grant's require and forbid lists: known rules, none
// in both, and only on a grant of serve on /expose/ paths (the one place
// they mean something).
func conditions(fg fileGrant, g Grant) (require, forbid []Rule, err error) {
	if len(fg.Require)+len(fg.Forbid) == 0 {
		return nil, nil, nil
	}
	if len(g.Actions) != 1 || g.Actions[0] != Serve || slices.ContainsFunc(g.Paths, func(p string) bool { return !strings.HasPrefix(p, "/expose/") }) {
		return nil, nil, errors.New(`require and forbid apply to agents: the grant may name only the action "serve" and paths under /expose/`)
	}
	read := func(list []string) ([]Rule, error) {
		var rs []Rule
		for _, s := range list {
			r := Rule(strings.ToLower(s))
			if !slices.Contains(allRules, r) {
				return nil, fmt.Errorf("unknown access rule %q (want basic-auth, allow-cidr or response-header)", s)
			}
			rs = append(rs, r)
		}
		return rs, nil
	}
	if require, err = read(fg.Require); err != nil {
		return nil, nil, err
	}
	if forbid, err = read(fg.Forbid); err != nil {
		return nil, nil, err
	}
	for _, r := range require {
		if slices.Contains(forbid, r) {
			return nil, nil, fmt.Errorf("access rule %q is both required and forbidden", r)
		}
	}
	return require, forbid, nil
}

func oneLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}
