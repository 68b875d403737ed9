package expose_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
)

// exposeAgent runs client.Expose in-process until the test ends and
// returns the public URL once it is ready.
func exposeAgent(t *testing.T, c *client.Client, name, local string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.Expose(ctx, client.ExposeOptions{
			Name: name, Local: local, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			OnReady: func(u string) {
				select {
				case ready <- u:
				default:
				}
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Expose returned %v", err)
		}
	})
	select {
	case u := <-ready:
		return u
	case err := <-done:
		t.Fatalf("Expose ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready within 10s")
	}
	return ""
}

// wildcardCert writes a self-signed certificate for *.domain and domain.
func wildcardCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "*." + domain},
		DNSNames: []string{"*." + domain, domain}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func localBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "local "+r.Host+" "+r.Header.Get("X-Forwarded-Proto")+" auth="+r.Header.Get("Authorization"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestNativeAgentOverTLS runs the node with a wildcard certificate for the
// expose domain: the agent connects over wss and users reach it by name
// over HTTPS with the certificate verified.
func TestNativeAgentOverTLS(t *testing.T) {
	certFile, keyFile, pool := wildcardCert(t)
	cfg := servertest.Config()
	cfg.Expose.Domain = domain
	cfg.TLSCertFile, cfg.TLSKeyFile = certFile, keyFile
	cfg.ShutdownTimeout = 5 * time.Second
	n := servertest.Start(t, cfg)
	base := "https://" + n.Addr
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	c, err := client.New(base, client.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	public := exposeAgent(t, c, "web", localBackend(t))
	port := n.Addr[strings.LastIndex(n.Addr, ":"):]
	if public != "https://web."+domain+port {
		t.Fatalf("public URL %q", public)
	}
	// The user's client resolves web.<domain> to the node and checks the
	// wildcard certificate against that name.
	user := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", n.Addr)
		},
	}}
	defer user.CloseIdleConnections()
	resp, err := user.Get(public + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "local web."+domain+port+" https") {
		t.Fatalf("over TLS: %d %q", resp.StatusCode, b)
	}
}

func TestNativeAgentAuth(t *testing.T) {
	policy := shopPolicy(t)
	n := servertest.Start(t, func() node.Config {
		cfg := servertest.Config()
		cfg.Expose.Domain = domain
		cfg.Policy = policy
		return cfg
	}())
	ctx := context.Background()
	for _, c := range []struct {
		name, token string
		status      int
	}{
		{"shop", "", http.StatusUnauthorized},
		{"shop", "user-secret-0123456789", http.StatusForbidden},
		{"other", "agent-secret-0123456789", http.StatusForbidden},
		{"Bad_Name", "agent-secret-0123456789", http.StatusBadRequest},
		{strings.Repeat("a", 52), "agent-secret-0123456789", http.StatusBadRequest},
	} {
		cl, _ := client.New(n.URL, client.WithToken(c.token))
		err := cl.Expose(ctx, client.ExposeOptions{Name: c.name, Local: "http://127.0.0.1:1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		var e *client.Error
		if !errors.As(err, &e) || e.StatusCode != c.status {
			t.Errorf("agent %q with %q: %v, want %d", c.name, c.token, err, c.status)
		}
	}
	cl, _ := client.New(n.URL, client.WithToken("agent-secret-0123456789"))
	exposeAgent(t, cl, "shop", localBackend(t))
	// Users need call on /expose/shop; their postern token never reaches
	// the service.
	for _, c := range []struct {
		token  string
		status int
	}{{"", 403}, {"agent-secret-0123456789", 403}, {"user-secret-0123456789", 200}} {
		req, _ := http.NewRequest("GET", n.URL+"/", nil)
		req.Host = "shop." + domain
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || (c.status == 200 && !strings.HasSuffix(string(b), "auth=")) {
			t.Errorf("user with %q: %d %q, want %d", c.token, resp.StatusCode, b, c.status)
		}
	}
}

// An agent that reconnects under its name is reachable the moment it is
// ready, even while the server is still seeing the previous connection
// out: a request the hub gives to the leaving agent moves to the new one
// (relay.ErrBackendGone) instead of failing with 502 "session shutdown".
// TestReadyAgentIsReachable covers fresh names.
func TestAgentReconnectedUnderItsNameIsReachable(t *testing.T) {
	cfg := servertest.Config()
	cfg.Expose.Domain = domain
	n := servertest.Start(t, cfg)
	local := localBackend(t)
	c, err := client.New(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	for round := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan struct{}, 1)
		done := make(chan error, 1)
		go func() {
			done <- c.Expose(ctx, client.ExposeOptions{
				Name: "quick", Local: local, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				OnReady: func(string) { ready <- struct{}{} },
			})
		}()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("round %d: Expose ended: %v", round, err)
		}
		req, _ := http.NewRequest("GET", n.URL+"/", nil)
		req.Host = "quick." + domain
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("round %d: Expose returned %v", round, err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("round %d: %d %q right after the agent was ready", round, resp.StatusCode, b)
		}
	}
}

// shopPolicy grants the token "agent-secret-0123456789" serving the name
// shop and "user-secret-0123456789" calling it.
func shopPolicy(t *testing.T) *auth.Policy {
	t.Helper()
	policy, err := auth.Parse([]byte(`
[[token]]
name = "agent"
secret = "agent-secret-0123456789"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/shop"]

[[token]]
name = "user"
secret = "user-secret-0123456789"
[[token.grant]]
actions = ["call"]
paths = ["/expose/shop"]
`))
	if err != nil {
		t.Fatal(err)
	}
	return policy
}
