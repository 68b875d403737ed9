package expose_test

import (
	"strings"
	"testing"

	"github.com/postern/postern/client"
)

// TestHostRouting: NAME.<domain> is matched without case, port or
// trailing dot; hosts that merely contain the domain are not the expose
// domain's, and a Host naming no valid agent is a clear 502, not another
// route.
func TestHostRouting(t *testing.T) {
	n := startNode(t, nil)
	cl, _ := client.New(n.URL)
	exposeAgent(t, cl, "shop", headerEcho(t))
	for _, h := range []string{"shop." + domain, "SHOP.Expose.Test", "shop." + domain + ":8443", "shop." + domain + ".", "shop." + domain + ".:80"} {
		if resp, body := do(t, n, "GET", h, "/in", nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "path=/in ") {
			t.Errorf("Host %q: %d %q", h, resp.StatusCode, body)
		}
	}
	// Every path under the agent's host is the agent's, postern's own
	// routes included.
	if resp, body := do(t, n, "GET", "shop."+domain, "/t/x/len", nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "path=/t/x/len ") {
		t.Errorf("tunnel path on the agent's host: %d %q", resp.StatusCode, body)
	}
	// Paths reach the agent as given: no cleaning, no redirect, the
	// user's percent-encoding kept, by Host and by the path route.
	for _, p := range []string{"/a/../b", "//x", "/a/./b", "/a%2Fb", "/%7Euser", "/caf%C3%A9"} {
		if resp, body := do(t, n, "GET", "shop."+domain, p, nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "path="+p+" ") {
			t.Errorf("Host route, path %q: %d %q", p, resp.StatusCode, body)
		}
		if resp, body := do(t, n, "GET", "", "/proxy/request/shop"+p, nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "path="+p+" ") {
			t.Errorf("path route, path %q: %d %q", p, resp.StatusCode, body)
		}
	}
	// Not the expose domain: the path routes answer.
	for _, h := range []string{"shop." + domain + ".evil", "shopexpose.test", "shop-" + domain, domain + ".shop"} {
		if resp, body := do(t, n, "GET", h, "/nowhere", nil); resp.StatusCode != 404 {
			t.Errorf("Host %q: %d %q, want the path router's 404", h, resp.StatusCode, body)
		}
	}
	// Under the domain but no valid agent name.
	for _, h := range []string{"a.shop." + domain, "sh_op." + domain, "-shop." + domain} {
		if resp, body := do(t, n, "GET", h, "/", nil); resp.StatusCode != 502 || !strings.Contains(body, "no agent is connected") {
			t.Errorf("Host %q: %d %q, want 502", h, resp.StatusCode, body)
		}
	}
	// The bare domain answers its version at / and leaves other paths to
	// the path routes.
	if resp, body := do(t, n, "GET", domain, "/", nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "postern/") {
		t.Errorf("bare domain: %d %q", resp.StatusCode, body)
	}
	if resp, _ := do(t, n, "GET", strings.ToUpper(domain)+":80", "/t/x/len", nil); resp.StatusCode != 204 {
		t.Errorf("bare domain tunnel route: %d", resp.StatusCode)
	}
}
