package expose_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/postern/postern/internal/expose/brickchain"
)

// TestBrickchainEveryMethodByEveryHostForm pins two improvements on the
// original proxy-server that docs/compatibility.md lists: it answered 405
// to PATCH, TRACE and HEAD, and 404 to a Host with a port or in upper
// case; postern relays every method to the brickchain agent, and matches
// the Host without case or port.
func TestBrickchainEveryMethodByEveryHostForm(t *testing.T) {
	n := startNode(t, nil)
	a := dialAgent(t, n)
	id := a.register(n, "")
	hosts := []string{id + "." + domain, strings.ToUpper(id + "." + domain), id + "." + domain + ":8443", strings.ToUpper(id) + "." + domain + ":80"}
	for _, method := range []string{"PATCH", "TRACE", "HEAD", "GET", "POST", "PUT", "DELETE", "OPTIONS"} {
		for _, host := range hosts {
			seen := make(chan brickchain.Frame, 1)
			go func() {
				f, _ := a.next()
				seen <- f
				a.send(brickchain.HTTPResponse{
					Base: brickchain.NewBase(brickchain.TypeHTTPResponse, f.ID), Status: 200,
					Headers: map[string]string{"X-Method": f.Method}, ContentType: "text/plain",
					Body: base64.StdEncoding.EncodeToString([]byte("seen " + f.Method)),
				})
			}()
			resp, body := do(t, n, method, host, "/m?x=1", nil)
			f := <-seen
			want := "seen " + method
			if method == "HEAD" {
				want = ""
			}
			if f.Type != brickchain.TypeHTTPRequest || f.Method != method || f.URL != "/m" || f.Query != "x=1" ||
				resp.StatusCode != 200 || body != want || resp.Header.Get("X-Method") != method {
				t.Fatalf("%s with Host %q: the agent saw %+v; the user got %d %q %v", method, host, f, resp.StatusCode, body, resp.Header)
			}
		}
	}
}
