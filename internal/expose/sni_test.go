package expose_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/servertest"
)

// serviceCert is a self-signed certificate for host, held by a local
// service (not by the node), and the pool that trusts it.
func serviceCert(t *testing.T, host string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: host, Organization: []string{"the local service"}},
		DNSNames: []string{host}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// tlsEcho is a local service speaking TLS with cert: it echoes what it
// reads, prefixed with the server name the client asked for.
func tlsEcho(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	return tcpServer(t, func(c *net.TCPConn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if err := tc.Handshake(); err != nil {
			return
		}
		io.WriteString(tc, "hello "+tc.ConnectionState().ServerName+"\n")
		io.Copy(tc, tc)
		tc.CloseWrite()
	})
}

// dialName opens TLS to the node's listener for server name, trusting pool.
func dialName(t *testing.T, addr, name string, pool *x509.CertPool) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: pool})
	if err == nil {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// TestExposeTLSPassthrough: TLS on the node's own port for a passthrough
// agent's name reaches the agent's local service untouched (its own
// certificate, its own handshake), while plain HTTP and TLS for other
// names on the same port are the node's, which serves HTTPS itself here.
func TestExposeTLSPassthrough(t *testing.T) {
	certFile, keyFile, nodePool := wildcardCert(t)
	cfg := servertest.Config()
	cfg.Expose.Domain = domain
	cfg.TLSCertFile, cfg.TLSKeyFile = certFile, keyFile
	n := servertest.Start(t, cfg)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: nodePool}}}
	defer hc.CloseIdleConnections()
	c, err := client.New("https://"+n.Addr, client.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	name := "vault." + domain
	cert, pool := serviceCert(t, name)
	a := startTCPAgent(t, c, client.ExposeOptions{Name: "vault", Local: "tls://" + strings.TrimPrefix(tlsEcho(t, cert), "tcp://")})
	port := n.Addr[strings.LastIndex(n.Addr, ":")+1:]
	if want := "tls://" + name + ":" + port; a.url != want {
		t.Fatalf("public URL %q, want %q", a.url, want)
	}
	exposeAgent(t, c, "web", localBackend(t)) // an HTTP agent beside it

	for i := range 3 {
		u, err := dialName(t, n.Addr, "VAULT."+strings.ToUpper(domain), pool)
		if err != nil {
			t.Fatalf("TLS to the passthrough name: %v", err)
		}
		if org := u.ConnectionState().PeerCertificates[0].Subject.Organization; len(org) != 1 || org[0] != "the local service" {
			t.Fatalf("the certificate was not the local service's: %v", org)
		}
		msg := fmt.Sprintf("message %d", i)
		io.WriteString(u, msg)
		u.CloseWrite()
		got, err := io.ReadAll(u)
		if want := "hello VAULT." + strings.ToUpper(domain) + "\n" + msg; err != nil || string(got) != want {
			t.Fatalf("through the passthrough: %q %v, want %q", got, err, want)
		}
		u.Close()
	}
	if got := n.Metric(t, "postern_expose_connections_total"); got != 3 {
		t.Errorf("postern_expose_connections_total %v, want 3", got)
	}

	// The node's own HTTPS, for the HTTP agent's name and for the node.
	user := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: nodePool},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", n.Addr)
		},
	}}
	defer user.CloseIdleConnections()
	resp, err := user.Get("https://web." + domain + ":" + port + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "local web."+domain) {
		t.Fatalf("HTTP agent beside the passthrough: %d %q", resp.StatusCode, b)
	}
	resp, err = user.Get("https://" + n.Addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the node's own endpoint: %v %v", resp, err)
	}
	resp.Body.Close()

	// Once the agent is gone its name is the node's again.
	a.stop()
	waitMetric(t, n, "postern_expose_agents", 1)
	if _, err := dialName(t, n.Addr, name, pool); err == nil {
		t.Fatal("TLS for a name whose passthrough agent left still reached the local service")
	}
	if u, err := dialName(t, n.Addr, name, nodePool); err != nil {
		t.Fatalf("TLS for the name with its agent gone: %v, want the node's certificate", err)
	} else {
		u.Close()
	}
}

// TestExposeTLSPassthroughOnPlainListener: a node serving plain HTTP
// passes TLS through too, and keeps answering HTTP on the same port.
func TestExposeTLSPassthroughOnPlainListener(t *testing.T) {
	cfg := servertest.Config()
	cfg.Expose.Domain = domain
	n := servertest.Start(t, cfg)
	cert, pool := serviceCert(t, "db."+domain)
	a := startTCPAgent(t, newClient(t, n), client.ExposeOptions{Name: "db", Local: "tls://" + strings.TrimPrefix(tlsEcho(t, cert), "tcp://")})
	if !strings.HasPrefix(a.url, "tls://db."+domain+":") {
		t.Fatalf("public URL %q", a.url)
	}
	u, err := dialName(t, n.Addr, "db."+domain, pool)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(u, "x")
	u.CloseWrite()
	if got, err := io.ReadAll(u); err != nil || string(got) != "hello db."+domain+"\nx" {
		t.Fatalf("passthrough: %q %v", got, err)
	}
	u.Close()
	for range 3 { // plain HTTP on the same port, new connections each
		resp, err := http.Get(n.URL + "/healthz")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("plain HTTP beside the passthrough: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	if code, msg := handshake(t, servertest.Start(t, servertest.Config()), "name=db&proto=tls", ""); code != 400 || !strings.Contains(msg, "without --expose-domain") {
		t.Fatalf("TLS passthrough without a domain: %d %q", code, msg)
	}
}

// TestExposeTLSPassthroughGrant: under a token policy a passthrough agent
// needs serve on /tls/NAME besides its name.
func TestExposeTLSPassthroughGrant(t *testing.T) {
	policy, err := auth.Parse([]byte(`
[[token]]
name = "agent"
secret = "agent-secret-0123456789"
[[token.grant]]
actions = ["serve"]
paths = ["/expose/*", "/tls/db"]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := servertest.Config()
	cfg.Expose.Domain = domain
	cfg.Policy = policy
	n := servertest.Start(t, cfg)
	if code, msg := handshake(t, n, "name=vault&proto=tls", "agent-secret-0123456789"); code != 403 || !strings.Contains(msg, "not granted serve on /tls/vault") {
		t.Fatalf("no /tls grant: %d %q", code, msg)
	}
	cert, _ := serviceCert(t, "db."+domain)
	startTCPAgent(t, newClient(t, n, client.WithToken("agent-secret-0123456789")), client.ExposeOptions{Name: "db", Local: "tls://" + strings.TrimPrefix(tlsEcho(t, cert), "tcp://")})
}
