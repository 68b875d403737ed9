package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// A DNSProvider publishes the TXT records by which the CA checks that
// whoever asks for *.<expose domain> controls the domain (ACME's DNS-01
// challenge). postern ships none: a program that embeds the node (see
// node.Config.ACME) sets one for its DNS host's API. Any API that can add
// and remove a TXT record fits; a libdns provider (the ecosystem of DNS
// API clients Go ACME tools share) adapts in a few lines.
type DNSProvider interface {
	// SetTXT publishes value as a TXT record of fqdn (such as
	// "_acme-challenge.tunnel.example.com") and returns once the zone's
	// name servers answer with it.
	SetTXT(ctx context.Context, fqdn, value string) error
	// DeleteTXT removes the record SetTXT published.
	DeleteTXT(ctx context.Context, fqdn, value string) error
}

// accountKeyName is where the account key lives in the cache: autocert's
// own name, so both issuers use one ACME account.
const accountKeyName = "acme_account+key"

// accountKey loads the ACME account key from the cache, or makes and
// stores one.
func accountKey(ctx context.Context, cache autocert.Cache) (crypto.Signer, error) {
	data, err := cache.Get(ctx, accountKeyName)
	if errors.Is(err, autocert.ErrCacheMiss) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := cache.Put(ctx, accountKeyName, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); err != nil {
			return nil, fmt.Errorf("ACME account key: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ACME account key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "EC PRIVATE KEY" {
		return nil, fmt.Errorf("ACME account key %s in the ACME directory: not an EC private key; remove it to make a new account", accountKeyName)
	}
	return x509.ParseECPrivateKey(block.Bytes)
}

// wildcard obtains *.<expose domain> through DNS-01 and renews it: one
// goroutine, from start to stop.
type wildcard struct {
	m        *Manager
	name     string // "*.<domain>"
	cacheKey string

	ready     chan struct{} // closed once a certificate is served
	readyOnce sync.Once

	once    sync.Once // start, or stop before it
	running bool
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
}

func newWildcard(m *Manager) *wildcard {
	ctx, cancel := context.WithCancel(context.Background())
	return &wildcard{
		// "+" is in no DNS name: no per-name key (autocert's: the
		// name itself) can be this one.
		m: m, name: "*." + m.opts.ExposeDomain, cacheKey: m.opts.ExposeDomain + "+wildcard",
		ready: make(chan struct{}), ctx: ctx, cancel: cancel, done: make(chan struct{}),
	}
}

func (w *wildcard) start() {
	w.once.Do(func() {
		w.running = true
		go w.run()
	})
}

func (w *wildcard) stop(ctx context.Context) error {
	w.once.Do(func() {}) // no start after stop
	w.cancel()
	if !w.running {
		return nil
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run keeps the wildcard fresh: after a failure it tries again after
// RetryAfter, doubling up to an hour.
func (w *wildcard) run() {
	defer close(w.done)
	backoff := w.m.opts.RetryAfter
	for {
		next, err := w.renew(w.ctx)
		if w.ctx.Err() != nil {
			return
		}
		if err != nil {
			w.m.failed.Inc()
			w.m.log.Warn("wildcard certificate not obtained", "name", w.name, "retry_in", backoff, "err", err)
			next, backoff = backoff, min(2*backoff, time.Hour)
		} else {
			backoff = w.m.opts.RetryAfter
		}
		t := time.NewTimer(next)
		select {
		case <-w.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// renew serves the cached certificate, obtains a new one when there is
// none or it is due, and says when to look again.
func (w *wildcard) renew(ctx context.Context) (time.Duration, error) {
	cert, err := w.load(ctx)
	if err == nil {
		w.serve(cert)
		if due := time.Until(cert.Leaf.NotAfter) - w.m.opts.RenewBefore; due > 0 {
			return due, nil
		}
	}
	if cert, err = w.obtain(ctx); err != nil {
		return 0, err
	}
	w.serve(cert)
	w.m.log.Info("wildcard certificate obtained", "name", w.name, "expires", cert.Leaf.NotAfter)
	return max(time.Until(cert.Leaf.NotAfter)-w.m.opts.RenewBefore, w.m.opts.RetryAfter), nil
}

func (w *wildcard) serve(cert *tls.Certificate) {
	w.m.mu.Lock()
	w.m.wildcard = cert
	w.m.mu.Unlock()
	w.readyOnce.Do(func() { close(w.ready) })
}

// load reads the cached wildcard (its key, then its chain, in PEM).
func (w *wildcard) load(ctx context.Context) (*tls.Certificate, error) {
	data, err := w.m.cache.Get(ctx, w.cacheKey)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, fmt.Errorf("cached %s: %w", w.name, err)
	}
	return &cert, nil
}

// obtain orders the wildcard, proves control of the domain through
// DNS-01 and stores the certificate with its key.
func (w *wildcard) obtain(ctx context.Context) (*tls.Certificate, error) {
	c := w.m.client
	if _, err := c.Register(ctx, w.m.account(), autocert.AcceptTOS); err != nil && !errors.Is(err, acme.ErrAccountAlreadyExists) {
		return nil, fmt.Errorf("ACME account: %w", err)
	}
	order, err := c.AuthorizeOrder(ctx, acme.DomainIDs(w.name))
	if err != nil {
		return nil, fmt.Errorf("order: %w", err)
	}
	for _, u := range order.AuthzURLs {
		if err := w.authorize(ctx, u); err != nil {
			return nil, err
		}
	}
	if order, err = c.WaitOrder(ctx, order.URI); err != nil {
		return nil, fmt.Errorf("order: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{w.name}}, key)
	if err != nil {
		return nil, err
	}
	chain, _, err := c.CreateCertFromOrder(ctx, order, csr, true)
	if err != nil {
		return nil, fmt.Errorf("finalize: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	pem.Encode(&buf, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	for _, b := range chain {
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: b})
	}
	cert, err := tls.X509KeyPair(buf.Bytes(), buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("issued %s: %w", w.name, err)
	}
	if err := w.m.cache.Put(ctx, w.cacheKey, buf.Bytes()); err != nil {
		w.m.log.Warn("wildcard certificate not cached", "err", err)
	}
	return &cert, nil
}

// authorize answers one authorization's DNS-01 challenge.
func (w *wildcard) authorize(ctx context.Context, url string) error {
	c := w.m.client
	z, err := c.GetAuthorization(ctx, url)
	if err != nil {
		return fmt.Errorf("authorization: %w", err)
	}
	if z.Status == acme.StatusValid {
		return nil
	}
	var chal *acme.Challenge
	for _, ch := range z.Challenges {
		if ch.Type == "dns-01" {
			chal = ch
		}
	}
	if chal == nil {
		return fmt.Errorf("the CA offers no dns-01 challenge for %s", w.name)
	}
	value, err := c.DNS01ChallengeRecord(chal.Token)
	if err != nil {
		return err
	}
	fqdn := "_acme-challenge." + z.Identifier.Value
	if err := w.m.opts.DNS.SetTXT(ctx, fqdn, value); err != nil {
		return fmt.Errorf("DNS provider: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := w.m.opts.DNS.DeleteTXT(dctx, fqdn, value); err != nil {
			w.m.log.Warn("DNS-01 record not removed", "fqdn", fqdn, "err", err)
		}
	}()
	if _, err := c.Accept(ctx, chal); err != nil {
		return fmt.Errorf("dns-01: %w", err)
	}
	if _, err := c.WaitAuthorization(ctx, url); err != nil {
		return fmt.Errorf("dns-01: %w", err)
	}
	return nil
}
