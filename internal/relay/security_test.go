package relay_test

import (
	"net/http"
	"testing"

	"github.com/postern/postern/internal/relay"
	"github.com/postern/postern/internal/relay/relaytest"
)

// TestForwardedForIsAChainWhoseLastHopIsReal: a user's own
// X-Forwarded-For is dropped on a direct request; a request marked
// forwarded (by a node, or forged by a user: the mark proves nothing)
// keeps the hops it lists and gets the address the node saw appended, so
// the backend's last hop is never the sender's choice. Through two nodes
// the backend sees the user's address, then the forwarding node's.
func TestForwardedForIsAChainWhoseLastHopIsReal(t *testing.T) {
	dir := relaytest.NewDirectory()
	a := startNode(t, dir)
	b := startNode(t, dir)
	reg := a.hub.Register("xff", backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("xff=" + r.Header.Get("X-Forwarded-For") + " proto=" + r.Header.Get("X-Forwarded-Proto") + " host=" + r.Header.Get("X-Forwarded-Host")))
	}))
	defer reg.Close()
	<-a.hub.Announced("xff")
	c := client(t)
	send := func(url string, hdr ...string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		req.Host = "site.example"
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf [256]byte
		n, _ := resp.Body.Read(buf[:])
		return string(buf[:n])
	}
	for _, tc := range []struct {
		name, url string
		hdr       []string
		want      string
	}{
		{"direct", a.url + "/u/xff/", []string{"X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https"},
			"xff=127.0.0.1 proto=http host=site.example"},
		{"forged mark", a.url + "/u/xff/", []string{"X-Forwarded-For", "203.0.113.7", relay.ForwardedHeader, "test", "X-Forwarded-Host", "evil.example"},
			"xff=203.0.113.7, 127.0.0.1 proto=http host=site.example"},
		{"through another node", b.url + "/u/xff/", []string{"X-Forwarded-For", "203.0.113.7"},
			"xff=127.0.0.1, 127.0.0.1 proto=http host=site.example"},
	} {
		if got := send(tc.url, tc.hdr...); got != tc.want {
			t.Errorf("%s: backend saw %q, want %q", tc.name, got, tc.want)
		}
	}
}
