package brickchain

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// MandateTokenType is the "@type" of the signed document.
const MandateTokenType = "https://IpsoVeritas.github.io/schemas/v0/mandate-token.json"

// MaxTokenBytes bounds the mandate tokens VerifyMandate looks at.
const MaxTokenBytes = 16 << 10

// DefaultMaxClockSkew is how far in the future a token's @timestamp may
// lie. The original accepted any future timestamp, which made a token
// minted with a wrong clock (or on purpose) valid for as long as it liked.
const DefaultMaxClockSkew = 5 * time.Minute

// Mandate is the signed document of a mandate token.
type Mandate struct {
	Type      string    `json:"@type"`
	Timestamp time.Time `json:"@timestamp"`
	URI       string    `json:"uri"`
	TTL       int       `json:"ttl"`
	Mandates  []string  `json:"mandates,omitempty"`
}

// Verification errors; each says what was wrong with the token.
var (
	ErrTokenMalformed = errors.New("mandate token is not a compact JWS")
	ErrTokenNoKey     = errors.New("mandate token has no embedded ES256 P-256 public key")
	ErrTokenSignature = errors.New("mandate token signature does not verify")
	ErrTokenPayload   = errors.New("mandate token payload is not a mandate token document")
	ErrTokenExpired   = errors.New("mandate token has expired")
	ErrTokenFuture    = errors.New("mandate token timestamp is in the future")
	ErrTokenURI       = errors.New("mandate token is not for this endpoint")
)

// VerifyOptions says what a valid token looks like.
type VerifyOptions struct {
	// BaseURL is the proxy's base URL; the token's uri must start with it.
	BaseURL string
	// Now is the time to check expiry against; zero: time.Now().
	Now time.Time
	// MaxClockSkew bounds a timestamp in the future; zero:
	// DefaultMaxClockSkew.
	MaxClockSkew time.Duration
}

// Verified is a token that passed: its key and its client id.
type Verified struct {
	Key     *jose.JSONWebKey
	Mandate Mandate
	// KeyID is the client id of the key (see ClientID).
	KeyID string
}

// VerifyMandate checks a mandate token as the original server did: a
// compact JWS signed ES256 with the P-256 key embedded in its protected
// header, whose document has not expired (@timestamp + ttl seconds) and
// whose uri starts with the base URL.
func VerifyMandate(token string, o VerifyOptions) (*Verified, error) {
	if len(token) > MaxTokenBytes || token == "" {
		return nil, ErrTokenMalformed
	}
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenMalformed, oneLine(err.Error()))
	}
	if len(jws.Signatures) != 1 {
		return nil, ErrTokenMalformed
	}
	jwk := jws.Signatures[0].Protected.JSONWebKey
	if jwk == nil || !jwk.Valid() || !jwk.IsPublic() {
		return nil, ErrTokenNoKey
	}
	pub, ok := jwk.Key.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, ErrTokenNoKey
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return nil, ErrTokenSignature
	}
	var m Mandate
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenPayload, oneLine(err.Error()))
	}
	if m.Timestamp.IsZero() {
		return nil, fmt.Errorf("%w: @timestamp is missing", ErrTokenPayload)
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	skew := o.MaxClockSkew
	if skew == 0 {
		skew = DefaultMaxClockSkew
	}
	if m.TTL < 0 || m.Timestamp.Add(time.Duration(m.TTL)*time.Second).Before(now) {
		return nil, ErrTokenExpired
	}
	if m.Timestamp.After(now.Add(skew)) {
		return nil, ErrTokenFuture
	}
	if !strings.HasPrefix(m.URI, o.BaseURL) {
		return nil, ErrTokenURI
	}
	id, err := ClientID(jwk)
	if err != nil {
		return nil, ErrTokenNoKey
	}
	return &Verified{Key: jwk, Mandate: m, KeyID: id}, nil
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// ClientID is the original's id of a key: its RFC 7638 SHA-256 thumbprint,
// base32 (standard alphabet, no padding), lowercased: 52 characters.
func ClientID(key *jose.JSONWebKey) (string, error) {
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return strings.ToLower(b32.EncodeToString(tp)), nil
}

// SessionID is the id a registration with a session string claims:
// lowercase unpadded base32 of SHA-256(keyID + session), so that one key
// can hold several names. An empty session claims keyID itself.
func SessionID(keyID, session string) string {
	if session == "" {
		return keyID
	}
	sum := sha256.Sum256([]byte(keyID + session))
	return strings.ToLower(b32.EncodeToString(sum[:]))
}

// IDLen is the length of every client id.
const IDLen = 52

// IsClientID reports whether s has the shape of a client id: 52 characters
// of the lowercase base32 alphabet.
func IsClientID(s string) bool {
	if len(s) != IDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}
