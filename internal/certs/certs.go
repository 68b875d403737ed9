// Package certs owns the node's automatic HTTPS: it obtains and renews
// TLS certificates from an ACME certificate authority (Let's Encrypt by
// default) and picks the certificate of each TLS handshake.
//
// Three kinds of names get certificates:
//
//   - the fixed names (--acme-domain), always;
//   - NAME.<expose domain>, on demand at the first handshake for it, and
//     only while an agent is connected as NAME (Options.Connected answers
//     that): a handshake for any other name is refused before the CA is
//     contacted, so nobody can spend the CA's rate limits by sending
//     made-up server names;
//   - *.<expose domain>, when a DNSProvider is set: one wildcard through
//     DNS-01, after which agents' names need no certificate of their own.
//
// Fixed and per-name certificates are validated through TLS-ALPN-01 on the
// node's own TLS listener, so the listener must be what the CA reaches on
// port 443 of those names; no port 80 is needed. It is built on
// golang.org/x/crypto/acme/autocert (issuance, the cache in a directory,
// renewal before expiry) and golang.org/x/crypto/acme (the wildcard's
// DNS-01 order).
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/postern/postern/internal/capability"
)

// Defaults of Options.
const (
	// DefaultCA is Let's Encrypt's production directory.
	DefaultCA = "https://acme-v02.api.letsencrypt.org/directory"
	// DefaultRetryAfter is how long handshakes for a name are refused
	// without contacting the CA after issuing its certificate failed.
	DefaultRetryAfter = time.Minute
	// DefaultRenewBefore is how long before expiry a certificate is
	// renewed.
	DefaultRenewBefore = 30 * 24 * time.Hour
)

// maxFailures bounds the names whose last failed issuance is remembered.
const maxFailures = 4096

// Options configures automatic HTTPS. It is on when Domains is not empty.
type Options struct {
	// Email is the contact of the ACME account (the CA's notices about
	// it); empty: an account without contact.
	Email string
	// Domains are the fixed names to serve (the expose domain itself, an
	// API host); the first is also served to clients that send no server
	// name.
	Domains []string
	// CA is the ACME directory URL; empty: DefaultCA.
	CA string
	// CARoots is a PEM file of root certificates to trust, besides the
	// system's, for the CA's own HTTPS: a test CA's.
	CARoots string
	// Dir caches the account key and the certificates; it is created
	// with mode 0700. Required.
	Dir string
	// ExposeDomain is the domain whose names NAME.<ExposeDomain> are
	// issued on demand while Connected(NAME); empty: none.
	ExposeDomain string
	// Connected reports whether an agent is connected as name (the expose
	// capability answers it); nil: no name is issued on demand.
	Connected func(ctx context.Context, name string) (bool, error)
	// DNS, when set, publishes DNS-01 records so the node obtains and
	// renews *.<ExposeDomain>. No provider ships with postern: a program
	// embedding the node sets one (see DNSProvider).
	DNS DNSProvider
	// RetryAfter is how long a name whose issuance failed is refused
	// without contacting the CA; zero: DefaultRetryAfter.
	RetryAfter time.Duration
	// RenewBefore is how long before expiry certificates are renewed;
	// zero: DefaultRenewBefore.
	RenewBefore time.Duration
}

// Enabled reports whether automatic HTTPS is on.
func (o *Options) Enabled() bool { return len(o.Domains) > 0 }

// Validate fills the defaults and reports the first setting that makes
// no sense.
func (o *Options) Validate() error {
	if !o.Enabled() {
		return nil
	}
	capability.Default(&o.CA, DefaultCA)
	capability.Default(&o.RetryAfter, DefaultRetryAfter)
	capability.Default(&o.RenewBefore, DefaultRenewBefore)
	if o.Dir == "" {
		return errors.New("ACME needs a directory for its keys and certificates (--acme-dir)")
	}
	for i, d := range o.Domains {
		d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
		if !strings.Contains(d, ".") || strings.ContainsAny(d, "*/: ") {
			return fmt.Errorf("invalid --acme-domain %q: want a DNS name such as tunnel.example.com (the expose domain's wildcard comes through a DNS provider)", o.Domains[i])
		}
		o.Domains[i] = d
	}
	o.ExposeDomain = strings.ToLower(strings.TrimSuffix(o.ExposeDomain, "."))
	if o.DNS != nil && o.ExposeDomain == "" {
		return errors.New("a DNS provider obtains the expose domain's wildcard: set the expose domain")
	}
	if o.RetryAfter < 0 || o.RenewBefore < 0 {
		return errors.New("ACME retry and renewal intervals must not be negative")
	}
	return nil
}

// errRefused is the answer to a handshake for a name the node does not
// get certificates for.
type errRefused struct{ name, why string }

func (e *errRefused) Error() string {
	return fmt.Sprintf("no certificate for %q: %s", e.name, e.why)
}

// Manager picks the certificate of each handshake and gets it from the
// CA when needed. Its one goroutine (the wildcard's, with a DNSProvider)
// starts with Start and ends with Shutdown.
type Manager struct {
	opts   Options
	log    *slog.Logger
	auto   *autocert.Manager
	client *acme.Client // the wildcard's; same account
	cache  autocert.Cache

	mu       sync.Mutex
	failures map[string]time.Time // name -> when its issuance failed
	wildcard *tls.Certificate     // nil until obtained

	refused, failed prometheus.Counter
	transport       *http.Transport // to the CA: idle connections closed at Shutdown

	wc *wildcard // nil without a DNS provider
}

// New returns the manager of opts (validated here). It contacts nobody:
// certificates are obtained at the first handshake that needs them.
func New(opts Options, deps capability.Deps) (*Manager, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if !opts.Enabled() {
		return nil, errors.New("ACME needs at least one --acme-domain")
	}
	hc, err := httpClient(opts.CARoots)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("ACME directory: %w", err)
	}
	m := &Manager{
		opts:      opts,
		transport: hc.Transport.(*http.Transport),
		log:       deps.Log().With("part", "acme"),
		cache:     autocert.DirCache(opts.Dir),
		failures:  make(map[string]time.Time),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_acme_refused_total",
			Help: "TLS handshakes refused without contacting the CA: a name not served, or one whose issuance failed moments ago.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_acme_failures_total",
			Help: "Certificate issuances that failed.",
		}),
	}
	// One account key for both issuers, read from (or made in) the
	// cache now: the directory is local, and two issuers making keys at
	// once would make two accounts.
	key, err := accountKey(context.Background(), m.cache)
	if err != nil {
		return nil, err
	}
	ua := "postern"
	m.auto = &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		Cache:       m.cache,
		HostPolicy:  m.allow,
		RenewBefore: opts.RenewBefore,
		Email:       opts.Email,
		Client:      &acme.Client{Key: key, DirectoryURL: opts.CA, HTTPClient: hc, UserAgent: ua},
	}
	if opts.DNS != nil {
		m.client = &acme.Client{Key: key, DirectoryURL: opts.CA, HTTPClient: hc, UserAgent: ua}
		m.wc = newWildcard(m)
	}
	deps.Register(m.refused, m.failed)
	return m, nil
}

// httpClient is the client of the CA's API, trusting the roots in file
// besides the system's.
func httpClient(file string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if file != "" {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--acme-ca-root: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--acme-ca-root %s: no PEM certificate in it", file)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: time.Minute}, nil
}

// TLSConfig returns the configuration of the node's TLS listener: its
// certificates come from the manager, and it answers TLS-ALPN-01.
func (m *Manager) TLSConfig() *tls.Config {
	c := m.auto.TLSConfig()
	c.GetCertificate = m.GetCertificate
	c.MinVersion = tls.VersionTLS12
	return c
}

// GetCertificate returns the certificate of a handshake: a TLS-ALPN-01
// challenge's, the wildcard's for an agent's name once there is one, or
// the name's own (from the cache, or from the CA when the name is served
// and has not failed moments ago).
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if hello.ServerName == "" {
		h := *hello
		h.ServerName = m.opts.Domains[0]
		hello = &h
	}
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if !strings.Contains(name, ".") {
		m.refused.Inc()
		return nil, &errRefused{name, "not a name this server serves"}
	}
	challenge := len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto
	if !challenge {
		if c := m.wildcardFor(name); c != nil {
			return c, nil
		}
	}
	c, err := m.auto.GetCertificate(hello)
	if err != nil {
		var refused *errRefused
		if errors.As(err, &refused) {
			m.refused.Inc()
		} else if !challenge {
			m.fail(name, err)
		}
		return nil, err
	}
	return c, nil
}

// agentName returns NAME of a name NAME.<expose domain>.
func (m *Manager) agentName(name string) (string, bool) {
	label, ok := strings.CutSuffix(name, "."+m.opts.ExposeDomain)
	return label, ok && m.opts.ExposeDomain != "" && label != "" && !strings.Contains(label, ".")
}

// wildcardFor returns the wildcard certificate when it covers name.
func (m *Manager) wildcardFor(name string) *tls.Certificate {
	if _, ok := m.agentName(name); !ok {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wildcard
}

// allow is autocert's host policy, asked at every handshake for a regular
// certificate before the cache and the CA: the fixed names, and the names
// of connected agents, unless their issuance failed moments ago.
func (m *Manager) allow(ctx context.Context, name string) error {
	if !slices.Contains(m.opts.Domains, name) {
		label, ok := m.agentName(name)
		if !ok || m.opts.Connected == nil {
			return &errRefused{name, "not a name this server serves"}
		}
		connected, err := m.opts.Connected(ctx, label)
		if err != nil {
			return &errRefused{name, "cannot tell whether its agent is connected: " + err.Error()}
		}
		if !connected {
			return &errRefused{name, "no agent is connected under that name"}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if at, ok := m.failures[name]; ok {
		if retry := at.Add(m.opts.RetryAfter); time.Now().Before(retry) {
			return &errRefused{name, fmt.Sprintf("its issuance failed; next try after %s", retry.UTC().Format(time.RFC3339))}
		}
		delete(m.failures, name)
	}
	return nil
}

// fail remembers that issuing name's certificate failed, so handshakes
// for it are refused for a while instead of each asking the CA again.
func (m *Manager) fail(name string, err error) {
	m.failed.Inc()
	m.log.Warn("certificate not obtained", "name", name, "err", err)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.failures) >= maxFailures {
		now := time.Now()
		for n, at := range m.failures {
			if now.Sub(at) >= m.opts.RetryAfter {
				delete(m.failures, n)
			}
		}
		if len(m.failures) >= maxFailures {
			clear(m.failures)
		}
	}
	m.failures[name] = time.Now()
}

// Name is the first fixed name: the one the node is reached by.
func (m *Manager) Name() string { return m.opts.Domains[0] }

// account is the ACME account the manager registers.
func (m *Manager) account() *acme.Account {
	a := &acme.Account{}
	if m.opts.Email != "" {
		a.Contact = []string{"mailto:" + m.opts.Email}
	}
	return a
}

// Start starts obtaining and renewing the wildcard, with a DNS provider.
func (m *Manager) Start() {
	if m.wc != nil {
		m.wc.start()
	}
}

// WildcardReady returns a channel closed once the wildcard certificate
// is served (never without a DNS provider).
func (m *Manager) WildcardReady() <-chan struct{} {
	if m.wc == nil {
		return make(chan struct{})
	}
	return m.wc.ready
}

// Shutdown stops the wildcard's renewal, waiting for an order in flight
// until ctx ends, and closes the idle connections to the CA. It is
// idempotent.
func (m *Manager) Shutdown(ctx context.Context) error {
	var err error
	if m.wc != nil {
		err = m.wc.stop(ctx)
	}
	m.transport.CloseIdleConnections()
	return err
}
