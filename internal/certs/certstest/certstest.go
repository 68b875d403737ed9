// Package certstest runs a real ACME certificate authority for tests:
// Let's Encrypt's test CA, pebble, in-process from its Go packages, with
// a DNS server that resolves every name to 127.0.0.1.
package certstest

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

// Validation is real: pebble's validation authority resolves names
// through the DNS server (every name is 127.0.0.1; TXT records are those
// published through it, a certs.DNSProvider) and connects for TLS-ALPN-01
// to the port the node under test listens on.
//
// pebble's validation authority keeps one goroutine for the life of the
// process; a test package's goleak check ignores it with IgnoreGoroutine.

// IgnoreGoroutine is the function of pebble's goroutine that outlives
// its tests, for goleak.IgnoreTopFunction.
const IgnoreGoroutine = "github.com/letsencrypt/pebble/v2/va.VAImpl.processTasks"

// DNS is a DNS server on 127.0.0.1 (TCP, as pebble asks) that
// answers A 127.0.0.1 for every name, no AAAA, and the TXT records set
// through it: the DNSProvider of the wildcard test.
type DNS struct {
	// Addr is the server's TCP address.
	Addr string
	srv  *dns.Server

	mu  sync.Mutex
	txt map[string][]string // fqdn without the final dot -> values
}

// StartDNS starts a DNS server on 127.0.0.1 until the test ends.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &DNS{Addr: ln.Addr().String(), txt: map[string][]string{}}
	d.srv = &dns.Server{Listener: ln, Net: "tcp", Handler: dns.HandlerFunc(d.answer)}
	served := make(chan struct{})
	d.srv.NotifyStartedFunc = func() { close(served) }
	go d.srv.ActivateAndServe()
	<-served
	t.Cleanup(func() { d.srv.Shutdown() })
	return d
}

func (d *DNS) answer(w dns.ResponseWriter, q *dns.Msg) {
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
func (d *DNS) SetTXT(_ context.Context, fqdn, value string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.txt[fqdn] = append(d.txt[fqdn], value)
	return nil
}

func (d *DNS) DeleteTXT(_ context.Context, fqdn, value string) error {
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

// Pebble is a running test CA.
type Pebble struct {
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

// StartPebble starts the CA's HTTPS server until the test ends; its
// requests wait until Validate names the port to validate names on
// (known once the node under test listens).
func StartPebble(t testing.TB) *Pebble {
	t.Helper()
	p := &Pebble{configured: make(chan struct{})}
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

// Validate configures the CA: its validation authority resolves names
// through resolver (a DNS's Addr) and connects to tlsPort for
// TLS-ALPN-01. It sets environment variables of pebble's, so the test
// must not be parallel.
func (p *Pebble) Validate(t testing.TB, resolver string, tlsPort int) {
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
func (p *Pebble) Orders() int64 { return p.orders.Load() }

// RootPEM is the root the CA's certificates chain to.
func (p *Pebble) RootPEM() []byte { return p.ca.GetRootCert(0).PEM() }

// Block makes the CA refuse orders for name and the names under it.
func (p *Pebble) Block(t testing.TB, name string) {
	if err := p.db.AddBlockedDomain(name); err != nil {
		t.Fatal(err)
	}
}
