package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/certs"
	"github.com/postern/postern/internal/certs/certstest"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/relay/relaytest"
	"github.com/postern/postern/internal/servertest"
)

func TestMain(m *testing.M) {
	// pebble's validation authority keeps one goroutine for the life of
	// the process, with no way to stop it.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(certstest.IgnoreGoroutine))
}

// domain is both the fixed ACME domain and the expose domain.
const domain = "postern.test"

// acmeNode is a node with automatic HTTPS from a pebble of its own.
type acmeNode struct {
	*servertest.Node
	ca    *certstest.Pebble
	roots *x509.CertPool // pebble's issuing root
}

// startACME starts the DNS server, pebble and a node whose ACME names
// domain, expose domain domain; with wildcard, the DNS server is the
// node's DNS provider. mutate changes the node's config further.
func startACME(t *testing.T, wildcard bool, mutate ...func(*node.Config)) *acmeNode {
	t.Helper()
	d := certstest.StartDNS(t)
	p := certstest.StartPebble(t)
	cfg := servertest.Config()
	cfg.Expose.Domain = domain
	cfg.ACME = certs.Options{
		Domains: []string{domain}, Email: "ops@" + domain,
		CA: p.Directory, CARoots: p.CARootFile, Dir: t.TempDir(),
	}
	if wildcard {
		cfg.ACME.DNS = d
	}
	if testing.Verbose() && os.Getenv("POSTERN_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	for _, f := range mutate {
		f(&cfg)
	}
	n := servertest.Start(t, cfg)
	_, port, _ := net.SplitHostPort(n.Addr)
	tlsPort, _ := strconv.Atoi(port)
	p.Validate(t, d.Addr, tlsPort)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(p.RootPEM()) {
		t.Fatal("pebble root")
	}
	return &acmeNode{Node: n, ca: p, roots: roots}
}

// client returns an HTTPS client that reaches every name at the node and
// trusts pebble's root only.
func (a *acmeNode) client(t *testing.T) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: a.roots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", a.Addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// handshake completes a TLS handshake with the node for name, verified
// against pebble's root, and returns the certificate served.
func (a *acmeNode) handshake(name string) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: time.Minute}
	conn, err := tls.DialWithDialer(d, "tcp", a.Addr, &tls.Config{ServerName: name, RootCAs: a.roots})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// url is the node's base URL under name.
func (a *acmeNode) url(name string) string {
	return "https://" + name + a.Addr[strings.LastIndex(a.Addr, ":"):]
}

// expose connects an agent for local under name through the node's
// HTTPS (its certificate for domain is issued then) until the test ends.
func (a *acmeNode) expose(t *testing.T, name, local string) {
	t.Helper()
	c, err := client.New(a.url(domain), client.WithHTTPClient(a.client(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(exposeAgent(t, c, name, local))
}

// exposeAgent connects an agent through c and returns once it is ready;
// the function returned disconnects it.
func exposeAgent(t *testing.T, c *client.Client, name, local string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan string, 1), make(chan error, 1)
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
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Expose returned %v", err)
			}
		})
	}
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Expose ended: %v", err)
	case <-time.After(time.Minute):
		cancel()
		t.Fatal("agent not ready within a minute")
	}
	return stop
}

func localService(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "local "+r.Host+" "+r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestACMEIssuesForDomainAndConnectedAgent: the node gets its ACME
// domain's certificate from pebble (validated through TLS-ALPN-01 on its
// listener) when the agent connects, and web.<domain>'s at the first
// request for it; a TLS client trusting pebble's root completes a request
// through the exposed service. Names without an agent, and names outside
// the expose domain, are refused without an order reaching the CA.
func TestACMEIssuesForDomainAndConnectedAgent(t *testing.T) {
	a := startACME(t, false)
	if got := a.ca.Orders(); got != 0 {
		t.Fatalf("orders before any handshake: %d", got)
	}
	a.expose(t, "web", localService(t))
	if got := a.ca.Orders(); got != 1 {
		t.Fatalf("orders after the agent connected: %d, want 1 (%s)", got, domain)
	}

	resp, err := a.client(t).Get(a.url("web."+domain) + "/hello")
	if err != nil {
		t.Fatalf("request through the exposed service: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "local web." + domain + a.Addr[strings.LastIndex(a.Addr, ":"):] + " /hello"
	if resp.StatusCode != 200 || string(body) != want {
		t.Fatalf("through the agent: %d %q, want 200 %q", resp.StatusCode, body, want)
	}
	if leaf := resp.TLS.PeerCertificates[0]; !slices.Equal(leaf.DNSNames, []string{"web." + domain}) {
		t.Fatalf("certificate of web.%s names %v", domain, leaf.DNSNames)
	}
	leaf, err := a.handshake(domain)
	if err != nil {
		t.Fatalf("handshake for %s: %v", domain, err)
	}
	if !slices.Equal(leaf.DNSNames, []string{domain}) {
		t.Fatalf("certificate of %s names %v", domain, leaf.DNSNames)
	}
	// A client without a server name gets the first domain's.
	conn, err := tls.Dial("tcp", a.Addr, &tls.Config{RootCAs: a.roots, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("handshake without a server name: %v", err)
	}
	if names := conn.ConnectionState().PeerCertificates[0].DNSNames; !slices.Equal(names, []string{domain}) {
		t.Fatalf("certificate without a server name names %v", names)
	}
	conn.Close()
	if got := a.ca.Orders(); got != 2 {
		t.Fatalf("orders: %d, want 2", got)
	}

	for _, name := range []string{"ghost." + domain, "a.web." + domain, "example.com", "localhost"} {
		if _, err := a.handshake(name); err == nil {
			t.Errorf("handshake for %s succeeded", name)
		}
	}
	if got := a.ca.Orders(); got != 2 {
		t.Fatalf("orders after refused names: %d, want still 2", got)
	}
	if got := a.Metric(t, "postern_acme_refused_total"); got != 4 {
		t.Fatalf("postern_acme_refused_total = %v, want 4", got)
	}
	// Certificates come from the cache from now on: no new order.
	if _, err := a.handshake("web." + domain); err != nil {
		t.Fatal(err)
	}
	if got := a.ca.Orders(); got != 2 {
		t.Fatalf("orders after a second handshake: %d, want still 2", got)
	}
}

// TestACMEWildcardThroughDNS01: with a DNS provider the node obtains
// *.<expose domain> through DNS-01 (pebble reads the TXT record the
// provider published from the test's DNS server) and serves it for any
// agent's name, with no order per name.
func TestACMEWildcardThroughDNS01(t *testing.T) {
	a := startACME(t, true)
	select {
	case <-a.WildcardReady():
	case <-time.After(time.Minute):
		t.Fatal("wildcard not obtained within a minute")
	}
	leaf, err := a.handshake("anything." + domain)
	if err != nil {
		t.Fatalf("handshake under the wildcard: %v", err)
	}
	if !slices.Equal(leaf.DNSNames, []string{"*." + domain}) {
		t.Fatalf("certificate names %v, want the wildcard", leaf.DNSNames)
	}
	a.expose(t, "web", localService(t)) // orders domain's own certificate
	resp, err := a.client(t).Get(a.url("web."+domain) + "/w")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !slices.Equal(resp.TLS.PeerCertificates[0].DNSNames, []string{"*." + domain}) {
		t.Fatalf("through the agent: %d, names %v", resp.StatusCode, resp.TLS.PeerCertificates[0].DNSNames)
	}
	if got := a.ca.Orders(); got != 2 {
		t.Fatalf("orders: %d, want 2 (the wildcard and %s)", got, domain)
	}
}

// TestACMEFailedIssuanceWaits: when the CA refuses a name, handshakes for
// it are refused for RetryAfter without another order.
func TestACMEFailedIssuanceWaits(t *testing.T) {
	a := startACME(t, false)
	a.expose(t, "blocked", localService(t))
	// Blocked after domain's order: pebble's block list indexes past the
	// end of names shorter than a blocked one.
	a.ca.Block(t, "blocked."+domain)
	for i := range 2 {
		if _, err := a.handshake("blocked." + domain); err == nil {
			t.Fatalf("handshake %d for a name the CA refuses succeeded", i)
		}
	}
	if got := a.ca.Orders(); got != 2 {
		t.Fatalf("orders: %d, want 2 (%s, and blocked.%s once)", got, domain, domain)
	}
	if f, r := a.Metric(t, "postern_acme_failures_total"), a.Metric(t, "postern_acme_refused_total"); f != 1 || r != 1 {
		t.Fatalf("failures %v, refused %v; want 1 and 1", f, r)
	}
}

// TestACMEAgentOnAnotherNode: node B issues web.<domain> while agent web
// is connected to node A (B asks the node directory) and forwards the
// request there; once the agent has left, B refuses the name, its
// certificate cached or not, without another order.
func TestACMEAgentOnAnotherNode(t *testing.T) {
	dir := relaytest.NewDirectory()
	acfg := servertest.Config()
	acfg.Expose.Domain, acfg.Directory = domain, dir
	a := servertest.Start(t, acfg)
	b := startACME(t, false, func(c *node.Config) { c.Directory = dir })

	c, err := client.New(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	stop := exposeAgent(t, c, "web", localService(t))
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := dir.WaitFor(ctx, "expose", "web", 1); err != nil {
		t.Fatalf("agent never listed: %v", err)
	}
	resp, err := b.client(t).Get(b.url("web."+domain) + "/far")
	if err != nil {
		t.Fatalf("through node B: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "local web."+domain) || !strings.HasSuffix(string(body), " /far") {
		t.Fatalf("through node B: %d %q", resp.StatusCode, body)
	}
	if got := b.ca.Orders(); got != 1 {
		t.Fatalf("orders: %d, want 1 (web.%s)", got, domain)
	}

	stop()
	if err := dir.WaitFor(ctx, "expose", "web", 0); err != nil {
		t.Fatalf("agent still listed: %v", err)
	}
	if _, err := b.handshake("web." + domain); err == nil {
		t.Fatal("handshake for the name of an agent that left succeeded")
	}
	if got := b.ca.Orders(); got != 1 {
		t.Fatalf("orders after the agent left: %d, want still 1", got)
	}
}

// TestACMECacheSurvivesRestart: a node started again on the same
// --acme-dir serves the certificate it had, with no new order.
func TestACMECacheSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	first := startACME(t, false, func(c *node.Config) { c.ACME.Dir = dir })
	if _, err := first.handshake(domain); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := first.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := servertest.Config()
	cfg.Expose.Domain = domain
	cfg.ACME = certs.Options{Domains: []string{domain}, CA: first.ca.Directory, CARoots: first.ca.CARootFile, Dir: dir}
	again := &acmeNode{Node: servertest.Start(t, cfg), ca: first.ca, roots: first.roots}
	leaf, err := again.handshake(domain)
	if err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	if !slices.Equal(leaf.DNSNames, []string{domain}) || first.ca.Orders() != 1 {
		t.Fatalf("after the restart: names %v, orders %d (want 1)", leaf.DNSNames, first.ca.Orders())
	}
}
