package web_test

import (
	"github.com/postern/postern/internal/browsertest"

	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/servertest"
)

// TestPageWithATokenInChromium: under a token file the status page and
// its data need a token granted ops; a person opens the page with the
// token in its query, and the page's own requests for the status carry it.
func TestPageWithATokenInChromium(t *testing.T) {
	b := browsertest.Tab(t)
	pol, err := auth.Parse([]byte("[[token]]\nname = \"ops\"\nsecret = \"ops-secret-0123456789\"\n[[token.grant]]\nactions = [\"ops\"]\npaths = [\"/ops/status\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := servertest.Config()
	cfg.NodeID = "node-with-token"
	cfg.Policy = pol
	n := servertest.Start(t, cfg)
	ctx, cancel := context.WithTimeout(b, 60*time.Second)
	defer cancel()
	run(t, ctx, chromedp.Navigate(n.URL+"/?access_token=ops-secret-0123456789"))
	waitFor(t, ctx, `document.body.dataset.ready === "1" && /node\s*node-with-token/.test(document.getElementById("status-cluster").textContent)`)
}
