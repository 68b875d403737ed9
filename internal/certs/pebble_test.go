package certs_test

import (
	"context"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// The tests run Let's Encrypt's test CA, pebble, in-process from its Go
// packages, with real validation: its validation authority resolves
// names through a DNS server of the test's (every name is 127.0.0.1; TXT
// records are what the test's DNS provider published) and connects for
// TLS-ALPN-01 to the port the node under test listens on.

// loopbackDNS is a DNS server on 127.0.0.1 (TCP, as pebble asks) that
// answers A 127.0.0.1 for every name, no AAAA, and the TXT records set
// through it: the DNSProvider of the wildcard test.
type loopbackDNS struct {
	srv  *dns.Server
	addr string

	mu  sync.Mutex
	txt map[string][]string // fqdn without the final dot -> values
}

func startDNS(t *testing.T) *loopbackDNS {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &loopbackDNS{addr: ln.Addr().String(), txt: map[string][]string{}}
	d.srv = &dns.Server{Listener: ln, Net: "tcp", Handler: dns.HandlerFunc(d.answer)}
	served := make(chan struct{})
	d.srv.NotifyStartedFunc = func() { close(served) }
	go d.srv.ActivateAndServe()
	<-served
	t.Cleanup(func() { d.srv.Shutdown() })
	return d
}

func (d *loopbackDNS) answer(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	for _, qu := range q.Question {
		hdr := dns.RR_Header{Name: qu.Name, Class: dns.ClassINET, Ttl: 0, Rrtype: qu.Qtype}
		switch qu.Qtype {
		case dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
		case dns.TypeTXT:
			d.mu.Lock()
			for _, v := range d.txt[strings.TrimSuffix(strings.ToLower(qu.Name), ".")] {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{v}})
			}
			d.mu.Unlock()
		}
	}
	w.WriteMsg(m)
}

// SetTXT and DeleteTXT make the server a certs.DNSProvider.
func (d *loopbackDNS) SetTXT(_ context.Context, fqdn, value string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.txt[fqdn] = append(d.txt[fqdn], value)
	return nil
}

func (d *loopbackDNS) DeleteTXT(_ context.Context, fqdn, value string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	vs := d.txt[fqdn]
	for i, v := range vs {
		if v == value {
			d.txt[fqdn] = append(vs[:i], vs[i+1:]...)
			break
		}
	}
	return nil
}

// pebble is a running test CA.
type pebble struct {
	// Directory is the ACME directory URL; CARootFile holds the
	// certificate of the CA's own HTTPS (for --acme-ca-root).
	Directory  string
	CARootFile string

	srv        *httptest.Server
	handler    http.Handler  // set by validate, before configured closes
	configured chan struct{} // closed by validate
	ca         *ca.CAImpl
	db         *db.MemoryStore
	orders     atomic.Int64
}

// startPebble starts the CA's HTTPS server; requests wait until validate
// names the port to validate names on (known once the node listens).
func startPebble(t *testing.T) *pebble {
	t.Helper()
	p := &pebble{configured: make(chan struct{})}
	p.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-p.configured:
		case <-r.Context().Done():
			return
		}
		if r.URL.Path == "/order-plz" {
			p.orders.Add(1)
		}
		p.handler.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	p.Directory = p.srv.URL + wfe.DirectoryPath
	p.CARootFile = filepath.Join(t.TempDir(), "pebble-https.pem")
	if err := os.WriteFile(p.CARootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// validate configures the CA: its validation authority resolves names
// through resolver and connects to tlsPort for TLS-ALPN-01.
func (p *pebble) validate(t *testing.T, resolver string, tlsPort int) {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")      // no random wait before validating
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0") // no nonces refused on purpose
	logger := log.New(io.Discard, "", 0)
	if testing.Verbose() && os.Getenv("POSTERN_TEST_LOG") != "" {
		logger = log.New(os.Stderr, "pebble ", 0)
	}
	store := db.NewMemoryStore()
	p.db = store
	p.ca = ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	v := va.New(logger, 0, tlsPort, false, resolver, store)
	w := wfe.New(logger, store, v, p.ca, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	p.handler = w.Handler()
	close(p.configured)
}

// Orders is how many orders the CA has been sent.
func (p *pebble) Orders() int64 { return p.orders.Load() }

// RootPEM is the root the CA's certificates chain to.
func (p *pebble) RootPEM() []byte { return p.ca.GetRootCert(0).PEM() }

// Block makes the CA refuse orders for name and the names under it.
func (p *pebble) Block(t *testing.T, name string) {
	if err := p.db.AddBlockedDomain(name); err != nil {
		t.Fatal(err)
	}
}
