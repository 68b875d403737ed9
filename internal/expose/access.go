package expose

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/expose/muxconn"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/ratelimit"
	"github.com/postern/postern/internal/relay"
)

// Access rules: a native agent may ask, in its handshake (muxconn.Access),
// for basic auth, an address allow-list and extra response headers. The
// node holding the agent enforces them in the agent's backend on the hub,
// so each agent of a name is guarded by its own rules, on every path the
// request came by (Host, /proxy/request/, forwarded by another node),
// before a byte reaches the agent.
//
// The client address is the one the per-address connection cap and the
// rate limits count (ratelimit.ClientAddr: the peer, or behind
// --trusted-proxies the client X-Forwarded-For names), decided by the node
// the user reached. A node forwarding the request says it in ClientHeader,
// which the holding node believes only under a forwarding mark that
// verified (the server drops the others before the front doors); the
// header never reaches an agent.

// ClientHeader carries the user's address from the node the user reached
// to the node holding the agent.
const ClientHeader = "X-Postern-Client"

type clientKey struct{}

// withClient decides r's client address, records it in r's context for
// the agent's rules and in ClientHeader for a node it may be forwarded to.
func (s *Service) withClient(r *http.Request) *http.Request {
	var client netip.Addr
	if r.Header.Get(relay.ForwardedHeader) != "" {
		client, _ = netip.ParseAddr(r.Header.Get(ClientHeader))
	}
	if !client.IsValid() {
		client = ratelimit.ClientAddr(r, s.trusted)
	}
	if client.IsValid() {
		r.Header.Set(ClientHeader, client.String())
	} else {
		r.Header.Del(ClientHeader)
	}
	return r.WithContext(context.WithValue(r.Context(), clientKey{}, client.Unmap()))
}

// clientOf is the client address withClient recorded (invalid when none).
func clientOf(ctx context.Context) netip.Addr {
	a, _ := ctx.Value(clientKey{}).(netip.Addr)
	return a
}

// access is one agent's rules as the server enforces them. The password
// is kept only as the SHA-256 of "user:password", compared in constant
// time, and never logged.
type access struct {
	asked  muxconn.Access // without the password
	name   string
	basic  bool
	sum    [sha256.Size]byte
	allow  []netip.Prefix
	header http.Header
}

func newAccess(name string, a muxconn.Access) *access {
	acc := &access{name: name, allow: a.Allow, header: a.Header, asked: a}
	acc.asked.Password = ""
	if a.User != "" {
		acc.basic = true
		acc.sum = sha256.Sum256([]byte(a.User + ":" + a.Password))
	}
	return acc
}

// rules are the rules a asks for, as token grants name them.
func (a *access) rules() []auth.Rule {
	var rs []auth.Rule
	for _, r := range a.asked.Rules() {
		rs = append(rs, auth.Rule(r))
	}
	return rs
}

// String describes the rules for the log, without the credentials.
func (a *access) String() string {
	var parts []string
	if a.basic {
		parts = append(parts, "basic-auth")
	}
	if len(a.allow) > 0 {
		parts = append(parts, "allow-cidr="+strconv.Itoa(len(a.allow)))
	}
	if len(a.header) > 0 {
		parts = append(parts, "response-headers="+strconv.Itoa(len(a.header)))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// Answers of the access rules.
var errAddressNotAllowed = &httpapi.Error{Status: http.StatusForbidden, Message: "forbidden: your address may not reach this site"}

func errCredentials(name string) *httpapi.Error {
	return httpapi.Errorf(http.StatusUnauthorized, "this site needs a user name and password").
		WithHeader("WWW-Authenticate", `Basic realm="`+name+`", charset="UTF-8"`)
}

// check refuses a request the rules do not let through with its answer:
// an address outside the allow-list first (who may not come is not asked
// for a password), then missing or wrong credentials.
func (a *access) check(req *http.Request) (*httpapi.Error, string) {
	if len(a.allow) > 0 {
		client := clientOf(req.Context())
		ok := false
		for _, p := range a.allow {
			if p.Contains(client) {
				ok = true
				break
			}
		}
		if !ok {
			return errAddressNotAllowed, "address_refused"
		}
	}
	if a.basic {
		user, pass, ok := req.BasicAuth()
		sum := sha256.Sum256([]byte(user + ":" + pass))
		if !ok || subtle.ConstantTimeCompare(sum[:], a.sum[:]) != 1 {
			return errCredentials(a.name), "unauthorized"
		}
	}
	return nil, ""
}

// withoutBasic returns req without its basic credentials: a copy, since
// the hub may hand the same request to another agent of the name (one on
// its way out), whose rules check them again.
func withoutBasic(req *http.Request) *http.Request {
	if len(req.Header.Values("Authorization")) == 0 {
		return req
	}
	req = req.Clone(req.Context())
	var kept []string
	for _, v := range req.Header.Values("Authorization") {
		if scheme, _, _ := strings.Cut(strings.TrimLeft(v, " \t"), " "); !strings.EqualFold(strings.SplitN(scheme, "\t", 2)[0], "Basic") {
			kept = append(kept, v)
		}
	}
	if len(kept) == 0 {
		req.Header.Del("Authorization")
	} else {
		req.Header["Authorization"] = kept
	}
	return req
}

// guarded is an agent's backend behind its access rules: a request they
// refuse never reaches rt, and every answer gets the rules' headers.
type guarded struct {
	rt    http.RoundTripper
	acc   *access
	count transportCounters
}

func (g guarded) RoundTrip(req *http.Request) (*http.Response, error) {
	if e, outcome := g.acc.check(req); e != nil {
		g.count.Request(outcome)
		return nil, e
	}
	if g.acc.basic {
		req = withoutBasic(req)
	}
	resp, err := g.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	for k, vs := range g.acc.header {
		resp.Header[k] = append([]string(nil), vs...)
	}
	return resp, nil
}
