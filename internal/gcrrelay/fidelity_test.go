package gcrrelay_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/postern/postern/internal/relay/relaytest"
	"github.com/postern/postern/internal/server"
)

// proxyHeadersEcho is a backend that answers the proxy headers it got.
func proxyHeadersEcho(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "xff=%q host=%q proto=%q fwd=%q", r.Header.Values("X-Forwarded-For"),
		r.Header.Values("X-Forwarded-Host"), r.Header.Values("X-Forwarded-Proto"), r.Header.Values("Forwarded"))
}

// TestForwardedHeadersOnlyWhenAsked: the original relay added no
// X-Forwarded-* header, and neither does postern by default: backends get
// the user's headers as they came, through one node or two. With
// ForwardedHeaders (--relay-forwarded-headers) postern sets them as a proxy
// does: the address it saw, the user's Host, the scheme.
func TestForwardedHeadersOnlyWhenAsked(t *testing.T) {
	own := []string{"Host", "relay.example", "X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https", "Forwarded", "for=203.0.113.7"}
	for _, tc := range []struct {
		on              bool
		bare, withOwn   string
		twoNodesWithOwn string
	}{
		{false,
			`xff=[] host=[] proto=[] fwd=[]`,
			`xff=["203.0.113.7"] host=[] proto=["https"] fwd=["for=203.0.113.7"]`,
			`xff=["203.0.113.7"] host=[] proto=["https"] fwd=["for=203.0.113.7"]`},
		{true,
			`xff=["127.0.0.1"] host=["relay.example"] proto=["http"] fwd=[]`,
			`xff=["127.0.0.1"] host=["relay.example"] proto=["http"] fwd=["for=203.0.113.7"]`,
			`xff=["127.0.0.1, 127.0.0.1"] host=["relay.example"] proto=["http"] fwd=["for=203.0.113.7"]`},
	} {
		t.Run(fmt.Sprintf("forwarded-headers=%v", tc.on), func(t *testing.T) {
			dir := relaytest.NewDirectory()
			cfg := func(c *server.Config) { c.Directory = dir; c.Relay.ForwardedHeaders = tc.on }
			a, b := start(t, cfg), start(t, cfg)
			a.runClient("fh", backendServer(t, proxyHeadersEcho), nil)
			a.want(a.do("GET", "/client/fh/", nil, "Host", "relay.example"), 200, tc.bare)
			a.want(a.do("GET", "/client/fh/", nil, own...), 200, tc.withOwn)
			// Through node b, which forwards to a, where the relay client is.
			<-a.node.RelayAnnounced("fh")
			b.want(b.do("GET", "/client/fh/", nil, own...), 200, tc.twoNodesWithOwn)
		})
	}
}
