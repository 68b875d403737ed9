package cli_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/postern/postern/internal/certs/certstest"
)

// TestServeAutomaticHTTPS: `postern serve --acme-domain ...`, with the
// flags docs/operations.md shows, serves HTTPS with a certificate the
// test CA issued (validated through TLS-ALPN-01 on the listener), its
// keys kept in the default --acme-dir under the store's directory.
func TestServeAutomaticHTTPS(t *testing.T) {
	dns, ca := certstest.StartDNS(t), certstest.StartPebble(t)
	data := t.TempDir()
	url, stop := serve(t, nil, "--store", "file:"+data, "--expose-domain", "gate.test",
		"--acme-domain", "gate.test", "--acme-email", "ops@gate.test",
		"--acme-ca", ca.Directory, "--acme-ca-root", ca.CARootFile)
	defer stop()
	// The banner names the node by its ACME domain.
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(url, "http://"))
	if host != "gate.test" {
		t.Fatalf("banner URL %s, want https://gate.test:PORT", url)
	}
	addr := net.JoinHostPort("127.0.0.1", port)
	tlsPort, _ := strconv.Atoi(port)
	ca.Validate(t, dns.Addr, tlsPort)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.RootPEM())

	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr) // gate.test is the node
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://gate.test:" + port + "/healthz")
	if err != nil {
		t.Fatalf("HTTPS with the issued certificate: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !slices.Equal(resp.TLS.PeerCertificates[0].DNSNames, []string{"gate.test"}) {
		t.Fatalf("healthz: %d %q, certificate for %v", resp.StatusCode, body, resp.TLS.PeerCertificates[0].DNSNames)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	for _, f := range []string{"acme_account+key", "gate.test"} {
		if _, err := os.Stat(filepath.Join(data, "acme", f)); err != nil {
			t.Errorf("--acme-dir: %v", err)
		}
	}
}
