package tunnel

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
)

// authorizer decides whether a request may use a tunnel. It holds only
// configuration: everything it learns from a request stays in that call
// (the original kept the last token and signature in globals).
type authorizer struct {
	enabled bool
	token   []byte
	secret  []byte
	public  map[string]bool
}

func newAuthorizer(o Options) *authorizer {
	a := &authorizer{public: make(map[string]bool)}
	if o.AccessToken != "" {
		a.token = []byte(o.AccessToken)
	}
	if o.SignatureSecret != "" {
		a.secret = []byte(o.SignatureSecret)
	}
	for _, id := range o.PublicIDs {
		a.public[id] = true
	}
	a.enabled = a.token != nil || a.secret != nil || len(a.public) > 0
	return a
}

// needsBody reports whether deciding on r may need its body.
func (a *authorizer) needsBody(r *http.Request) bool {
	return a.secret != nil && r.Header.Get("X-Hub-Signature-256") != ""
}

// allow reports whether the request may use tunnel id. body is the raw
// request body when needsBody said so.
func (a *authorizer) allow(r *http.Request, id string, body []byte) bool {
	if !a.enabled || a.public[id] {
		return true
	}
	if a.token != nil {
		if tok, ok := ParseBearer(r.Header.Get("Authorization")); ok &&
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

// ParseBearer returns the token of an "Authorization: Bearer <token>" value.
// The scheme is matched in any case and must start the value; the token is
// what follows the spaces after it, with trailing spaces removed.
func ParseBearer(h string) (string, bool) {
	scheme, rest, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok := strings.Trim(rest, " \t")
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", false
	}
	return tok, true
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
