package cluster_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/cluster"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func keys(t testing.TB, secret, node string, now time.Time) *cluster.Keys {
	t.Helper()
	k, err := cluster.New(cluster.Options{Secret: secret, Node: node, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSignedMarksVerifyOnlyForTheirRequest sends signed requests through
// a real HTTP server, which verifies them as it read them: the mark holds
// for its own request line and time, and for nothing else.
func TestSignedMarksVerifyOnlyForTheirRequest(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	signer := keys(t, "shared-secret-0123456789", "node a;%=\x01", now)
	verdict := make(chan error, 1)
	var verifier *cluster.Keys
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m, err := verifier.Verify(r)
		if err == nil && (m.Namespace != "expose" || m.Node != "node a;%=\x01" || !m.Time.Equal(now)) {
			err = errors.New("verified mark reads wrong: " + m.Namespace + " " + m.Node)
		}
		verdict <- err
	}))
	defer srv.Close()
	send := func(method, target, host string, mark func(r *http.Request) string) error {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+target, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		req.Header.Set(cluster.Header, mark(req))
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return <-verdict
	}
	sign := func(r *http.Request) string { return signer.Sign("expose", r) }
	signedFor := func(method, target, host string) func(*http.Request) string {
		return func(*http.Request) string {
			r, _ := http.NewRequest(method, "http://x"+target, nil)
			r.Host = host
			return signer.Sign("expose", r)
		}
	}
	verifier = keys(t, "shared-secret-0123456789", "node b", now.Add(10*time.Second))
	for _, target := range []string{"/x", "/a%2Fb/c?q=1&access_token=s", "/caf%C3%A9?x=1;y=2", "/"} {
		if err := send("GET", target, "shop.example:8080", sign); err != nil {
			t.Fatalf("%s: %v", target, err)
		}
	}
	for _, c := range []struct {
		name string
		mark func(*http.Request) string
		want error
	}{
		{"other path", signedFor("GET", "/y", "shop.example"), cluster.ErrSignature},
		{"other query", signedFor("GET", "/x?q=2", "shop.example"), cluster.ErrSignature},
		{"other method", signedFor("POST", "/x?q=1", "shop.example"), cluster.ErrSignature},
		{"other host", signedFor("GET", "/x?q=1", "evil.example"), cluster.ErrSignature},
		{"other namespace", func(r *http.Request) string {
			return strings.Replace(signer.Sign("expose", r), "expose;", "relay;", 1)
		}, cluster.ErrSignature},
		{"other secret", func(r *http.Request) string {
			return keys(t, "another-secret-0123456789", "node a;%=\x01", now).Sign("expose", r)
		}, cluster.ErrSignature},
		{"other node", func(r *http.Request) string {
			return strings.Replace(signer.Sign("expose", r), "node=node%20a", "node=node%20b", 1)
		}, cluster.ErrSignature},
		{"too old", func(r *http.Request) string {
			return keys(t, "shared-secret-0123456789", "node a;%=\x01", now.Add(-31*time.Second)).Sign("expose", r)
		}, cluster.ErrExpired},
		{"too new", func(r *http.Request) string {
			return keys(t, "shared-secret-0123456789", "node a;%=\x01", now.Add(41*time.Second)).Sign("expose", r)
		}, cluster.ErrExpired},
		{"bare namespace", func(*http.Request) string { return "expose" }, cluster.ErrMalformed},
		{"no signature", func(*http.Request) string { return "expose; node=a; t=1800000000; sig=" }, cluster.ErrMalformed},
	} {
		if err := send("GET", "/x?q=1", "shop.example", c.mark); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestNewRefusesShortSecrets(t *testing.T) {
	if _, err := cluster.New(cluster.Options{Secret: "short"}); err == nil {
		t.Fatal("a 5-character secret was taken")
	}
}

// FuzzVerify: any mark a client sends is refused with one of the errors,
// never accepted, and never makes Verify fail otherwise.
func FuzzVerify(f *testing.F) {
	k := keys(f, "shared-secret-0123456789", "n", time.Unix(1_800_000_000, 0))
	r, _ := http.NewRequest("GET", "http://h/x", nil)
	f.Add(k.Sign("relay", r))
	f.Add("expose")
	f.Add("expose; node=%zz; t=1; sig=AA")
	f.Add("; node=; t=; sig=")
	f.Fuzz(func(t *testing.T, mark string) {
		req, _ := http.NewRequest("GET", "http://h/y", nil)
		req.Header.Set(cluster.Header, mark)
		_, err := k.Verify(req)
		if err == nil {
			t.Fatalf("mark %q verified for another request", mark)
		}
		if !errors.Is(err, cluster.ErrMalformed) && !errors.Is(err, cluster.ErrSignature) && !errors.Is(err, cluster.ErrExpired) {
			t.Fatalf("mark %q: unexpected error %v", mark, err)
		}
	})
}
