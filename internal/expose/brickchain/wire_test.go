package brickchain_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/expose/brickchain"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// mint signs a mandate token document with key, embedding its public JWK.
func mint(t testing.TB, key *ecdsa.PrivateKey, doc any) string {
	t.Helper()
	payload, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{EmbedJWK: true}))
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func doc(ts time.Time, uri string, ttl int) map[string]any {
	return map[string]any{"@type": brickchain.MandateTokenType, "@timestamp": ts.UTC().Format(time.RFC3339Nano), "uri": uri, "ttl": ttl, "mandates": []string{}}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// thumbprintID computes the id by RFC 7638 by hand: the required members
// in lexicographic order, no white space.
func thumbprintID(k *ecdsa.PublicKey) string {
	enc := base64.RawURLEncoding
	x, y := make([]byte, 32), make([]byte, 32)
	k.X.FillBytes(x)
	k.Y.FillBytes(y)
	canon := `{"crv":"P-256","kty":"EC","x":"` + enc.EncodeToString(x) + `","y":"` + enc.EncodeToString(y) + `"}`
	sum := sha256.Sum256([]byte(canon))
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))
}

func TestVerifyMandate(t *testing.T) {
	key := newKey(t)
	now := time.Now()
	base := "https://proxy.example.com"
	good := mint(t, key, doc(now.Add(-10*time.Second), base+"/", 60))
	v, err := brickchain.VerifyMandate(good, brickchain.VerifyOptions{BaseURL: base, Now: now})
	if err != nil {
		t.Fatalf("good token: %v", err)
	}
	want := thumbprintID(&key.PublicKey)
	if v.KeyID != want || len(v.KeyID) != 52 || !brickchain.IsClientID(v.KeyID) {
		t.Fatalf("KeyID = %q, want %q", v.KeyID, want)
	}
	// A session claims base32(SHA-256(id + session)).
	sum := sha256.Sum256([]byte(want + "kitchen"))
	wantSession := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))
	if got := brickchain.SessionID(want, "kitchen"); got != wantSession || got == want {
		t.Fatalf("SessionID = %q, want %q", got, wantSession)
	}
	if brickchain.SessionID(want, "") != want {
		t.Fatal("empty session must keep the key's id")
	}

	other := newKey(t)
	parts := strings.Split(good, ".")
	forged := strings.Split(mint(t, other, doc(now, base, 60)), ".")
	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"expired", mint(t, key, doc(now.Add(-61*time.Second), base, 60)), brickchain.ErrTokenExpired},
		{"negative ttl", mint(t, key, doc(now, base, -1)), brickchain.ErrTokenExpired},
		{"future", mint(t, key, doc(now.Add(time.Hour), base, 60)), brickchain.ErrTokenFuture},
		{"wrong uri", mint(t, key, doc(now, "https://elsewhere.example.com", 60)), brickchain.ErrTokenURI},
		{"payload swapped", parts[0] + "." + forged[1] + "." + parts[2], brickchain.ErrTokenSignature},
		{"signature swapped", parts[0] + "." + parts[1] + "." + forged[2], brickchain.ErrTokenSignature},
		{"not a jws", "hello", brickchain.ErrTokenMalformed},
		{"empty", "", brickchain.ErrTokenMalformed},
		{"no payload doc", mint(t, key, "just a string"), brickchain.ErrTokenPayload},
		{"no timestamp", mint(t, key, map[string]any{"uri": base, "ttl": 60}), brickchain.ErrTokenPayload},
	}
	for _, c := range cases {
		_, err := brickchain.VerifyMandate(c.token, brickchain.VerifyOptions{BaseURL: base, Now: now})
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}

	// No embedded key: signed without EmbedJWK.
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	payload, _ := json.Marshal(doc(now, base, 60))
	jws, _ := signer.Sign(payload)
	bare, _ := jws.CompactSerialize()
	if _, err := brickchain.VerifyMandate(bare, brickchain.VerifyOptions{BaseURL: base, Now: now}); !errors.Is(err, brickchain.ErrTokenNoKey) {
		t.Errorf("no jwk: %v", err)
	}
	// Another algorithm is refused at parse time.
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: bytes.Repeat([]byte("k"), 32)}, nil)
	jws, _ = hs.Sign(payload)
	hmacTok, _ := jws.CompactSerialize()
	if _, err := brickchain.VerifyMandate(hmacTok, brickchain.VerifyOptions{BaseURL: base, Now: now}); !errors.Is(err, brickchain.ErrTokenMalformed) {
		t.Errorf("HS256: %v", err)
	}
}

func TestDecode(t *testing.T) {
	f, err := brickchain.Decode([]byte(`{"@type":"https://proxy.brickchain.com/v1/http-response.json","@timestamp":"2020-01-01T00:00:00Z","@id":"r1","status":201,"headers":{"X-A":"1"},"contentType":"text/plain","body":"aGk=","extra":[1,{"a":null}]}`))
	if err != nil || f.Type != brickchain.TypeHTTPResponse || f.ID != "r1" || f.Status != 201 || f.Headers["X-A"] != "1" || f.Body != "aGk=" {
		t.Fatalf("Decode = %+v, %v", f, err)
	}
	// A timestamp of another shape is ignored, not fatal.
	if _, err := brickchain.Decode([]byte(`{"@type":"https://proxy.brickchain.com/v1/ws-teardown.json","@timestamp":12,"@id":"c"}`)); err != nil {
		t.Fatalf("odd timestamp: %v", err)
	}
	if _, err := brickchain.Decode([]byte(`{"@type":"https://proxy.brickchain.com/v1/ws-message.json","body":"x"}`)); !errors.Is(err, brickchain.ErrMissingID) {
		t.Fatalf("missing id: %v", err)
	}
	if f, err := brickchain.Decode([]byte(`{"@type":"https://example.com/other.json"}`)); !errors.Is(err, brickchain.ErrUnknownType) || f.Type == "" {
		t.Fatalf("unknown type: %+v %v", f, err)
	}
	for _, bad := range []string{``, `[]`, `{"@type":5}`, `{"status":"x","@type":"https://proxy.brickchain.com/v1/http-response.json"}`, `{`} {
		if _, err := brickchain.Decode([]byte(bad)); !errors.Is(err, brickchain.ErrMalformed) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed", bad, err)
		}
	}
}

func TestEncodeShapes(t *testing.T) {
	req := brickchain.HTTPRequest{Base: brickchain.NewBase(brickchain.TypeHTTPRequest, "id1"), URL: "/x", Headers: map[string]string{"A": "b"}, Method: "GET"}
	var m map[string]any
	b, _ := json.Marshal(req)
	json.Unmarshal(b, &m)
	if _, ok := m["query"]; ok {
		t.Fatalf("empty query must be omitted: %s", b)
	}
	for _, k := range []string{"@type", "@timestamp", "@id", "url", "headers", "method", "body"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("field %q missing: %s", k, b)
		}
	}
	ts, err := time.Parse(time.RFC3339, m["@timestamp"].(string))
	if err != nil || ts.Location() != time.UTC {
		t.Fatalf("@timestamp %v: %v", m["@timestamp"], err)
	}
	if !json.Valid(brickchain.PingFrame) || !bytes.HasSuffix(brickchain.PingFrame, []byte("}\n")) {
		t.Fatal("ping frame")
	}
	id := brickchain.NewID()
	if len(id) != 36 || id[14] != '4' {
		t.Fatalf("NewID = %q", id)
	}
}

func TestScanHead(t *testing.T) {
	big := strings.Repeat("A", 1<<20)
	frame := `{"status":200,"body":"` + big + `","headers":{"a":"b","c":["x",{"d":1.5e3}]},"@id":"req-7","ok":true,"n":null,"@type":"https://proxy.brickchain.com/v1/http-response.json"}`
	typ, id, err := brickchain.ScanHead(strings.NewReader(frame))
	if err != nil || typ != brickchain.TypeHTTPResponse || id != "req-7" {
		t.Fatalf("ScanHead = %q %q %v", typ, id, err)
	}
	// A truncated frame still reports what it saw before the cut.
	_, id, err = brickchain.ScanHead(strings.NewReader(`{"@id":"early","body":"` + big))
	if err == nil || id != "early" {
		t.Fatalf("truncated: %q %v", id, err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"@type":"https://proxy.brickchain.com/v1/http-response.json","@id":"r1","status":200,"headers":{"A":"b"},"body":"aGk="}`))
	f.Add([]byte(`{"@type":"https://proxy.brickchain.com/v1/registration-request.json","@id":"x","mandateToken":"a.b.c","session":"s"}`))
	f.Add([]byte(`{"@type":"https://proxy.brickchain.com/v1/ws-message.json","@id":"c","messageType":2,"body":"\u00ff"}`))
	f.Add([]byte(`{"@type":"https://proxy.brickchain.com/v1/ws-response.json","@id":"c","ok":false,"error":"no"}`))
	f.Add([]byte(`{"@type":null}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := brickchain.Decode(data)
		if err == nil && len(fr.ID) > brickchain.MaxIDBytes {
			t.Fatalf("id of %d bytes accepted", len(fr.ID))
		}
		// ScanHead agrees with Decode on valid objects about the type.
		typ, _, serr := brickchain.ScanHead(bytes.NewReader(data))
		if err == nil && serr == nil && len(fr.Type) <= brickchain.MaxIDBytes && !strings.Contains(fr.Type, `\`) && typ != fr.Type {
			t.Fatalf("ScanHead type %q, Decode type %q", typ, fr.Type)
		}
	})
}

func FuzzVerifyMandate(f *testing.F) {
	key := newKey(f)
	now := time.Now()
	f.Add(mint(f, key, doc(now, "http://localhost:8080", 60)))
	f.Add(mint(f, key, doc(now.Add(-time.Hour), "http://localhost:8080", 60)))
	f.Add("eyJhbGciOiJFUzI1NiJ9.e30.AAAA")
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		v, err := brickchain.VerifyMandate(token, brickchain.VerifyOptions{BaseURL: "http://localhost:8080", Now: now})
		if err == nil && (v == nil || !brickchain.IsClientID(v.KeyID) || !strings.HasPrefix(v.Mandate.URI, "http://localhost:8080")) {
			t.Fatalf("accepted token gave %+v", v)
		}
	})
}
