package tunnel

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/postern/postern/internal/auth"
)

// authorizer decides whether a request may use a tunnel. It holds only
// configuration: everything it learns from a request stays in that call
// (the original kept the last token and signature in globals).
//
// The seed's schemes (one access token, a signature secret, public ids) and
// postern's scoped tokens (auth.Policy) are alternatives: a request passes
// when any configured scheme lets it. With none configured, tunnels are
// open, as in the original.
type authorizer struct {
	enabled bool
	token   []byte
	secret  []byte
	public  map[string]bool
	policy  *auth.Policy
}

func newAuthorizer(o Options, policy *auth.Policy) *authorizer {
	a := &authorizer{public: make(map[string]bool), policy: policy}
	if o.AccessToken != "" {
		a.token = []byte(o.AccessToken)
	}
	if o.SignatureSecret != "" {
		a.secret = []byte(o.SignatureSecret)
	}
	for _, id := range o.PublicIDs {
		a.public[id] = true
	}
	a.enabled = a.token != nil || a.secret != nil || len(a.public) > 0 || a.policy.Enabled()
	return a
}

// needsBody reports whether deciding on r may need its body.
func (a *authorizer) needsBody(r *http.Request) bool {
	return a.secret != nil && r.Header.Get("X-Hub-Signature-256") != ""
}

// allow reports whether the request may take action on tunnel id. body is
// the raw request body when needsBody said so.
func (a *authorizer) allow(r *http.Request, action auth.Action, id string, body []byte) bool {
	if !a.enabled || a.public[id] {
		return true
	}
	if a.policy.Allow(r, action, "/t/"+id) {
		return true
	}
	if a.token != nil {
		if tok, ok := auth.ParseBearer(r.Header.Get("Authorization")); ok &&
			subtle.ConstantTimeCompare([]byte(tok), a.token) == 1 {
			return true
		}
	}
	if a.secret != nil && len(body) > 0 {
		if sig, ok := ParseSignature(r.Header.Get("X-Hub-Signature-256")); ok {
			mac := hmac.New(sha256.New, a.secret)
			mac.Write(body)
			if hmac.Equal(sig, mac.Sum(nil)) {
				return true
			}
		}
	}
	return false
}

// ParseSignature decodes an X-Hub-Signature-256 value "sha256=<64 hex
// digits>". Other algorithms and malformed digests are refused.
func ParseSignature(h string) ([]byte, bool) {
	const prefix = "sha256="
	if len(h) != len(prefix)+2*sha256.Size || !strings.EqualFold(h[:len(prefix)], prefix) {
		return nil, false
	}
	sig, err := hex.DecodeString(h[len(prefix):])
	if err != nil {
		return nil, false
	}
	return sig, true
}
