package certs_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/certs"
)

// selfSigned returns a certificate for name with its key, as PEM (key
// first, as the ACME cache keeps them).
func selfSigned(b *testing.B, name string) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
}

// BenchmarkHandshake compares full TLS handshakes on loopback served by
// a certificate file's configuration (the baseline) and by the ACME
// manager with the name's certificate in its cache, for a fixed name and
// for an agent's (whose handshakes ask whether the agent is connected).
func BenchmarkHandshake(b *testing.B) {
	dir := b.TempDir()
	pemFixed, pemAgent := selfSigned(b, domain), selfSigned(b, "web."+domain)
	os.WriteFile(filepath.Join(dir, domain), pemFixed, 0o600)
	os.WriteFile(filepath.Join(dir, "web."+domain), pemAgent, 0o600)
	file, err := tls.X509KeyPair(pemFixed, pemFixed)
	if err != nil {
		b.Fatal(err)
	}
	m, err := certs.New(certs.Options{
		Domains: []string{domain}, Dir: dir, ExposeDomain: domain, CA: "https://127.0.0.1:1/dir",
		Connected: func(_ context.Context, name string) (bool, error) { return name == "web", nil },
	}, capability.Discard())
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name, sni string
		cfg       *tls.Config
	}{
		{"file", domain, &tls.Config{Certificates: []tls.Certificate{file}}},
		{"acme/fixed", domain, m.TLSConfig()},
		{"acme/agent", "web." + domain, m.TLSConfig()},
	} {
		b.Run(c.name, func(b *testing.B) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", c.cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer conn.Close()
						conn.(*tls.Conn).Handshake()
						io.Copy(io.Discard, conn)
					}()
				}
			}()
			client := &tls.Config{ServerName: c.sni, InsecureSkipVerify: true}
			for b.Loop() {
				conn, err := tls.Dial("tcp", ln.Addr().String(), client)
				if err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
	m.Shutdown(context.Background())
}
