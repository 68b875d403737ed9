package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/browsertest"
)

// TestInspectorPageInChromium: the inspector's page, in headless
// Chromium, lists the requests as they come, shows one with its headers
// and bodies (as text: markup in a request is never interpreted), and
// replays it with its button.
func TestInspectorPageInChromium(t *testing.T) {
	tab := browsertest.Tab(t)
	// Generous: a passing run takes seconds, but a loaded machine slows
	// Chromium a lot.
	page, cancel := context.WithTimeout(tab, 5*time.Minute)
	defer cancel()
	waitFor := func(cond string) {
		t.Helper()
		if _, err := chromedp.Run(page, chromedp.Poll[bool](cond, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(2*time.Minute))); err != nil {
			t.Fatalf("waiting for %s: %v", cond, err)
		}
	}

	env := startInspected(t, client.InspectorOptions{})
	if err := chromedp.Do(page, chromedp.Navigate(env.inspector+"/")); err != nil {
		t.Fatal(err)
	}
	waitFor(`!document.getElementById("empty").hidden`)
	env.user(t, "POST", "/orders", "<b>bold</b> order")
	waitFor(`document.querySelectorAll("#requests tbody tr").length === 1`)
	if err := chromedp.Do(page, chromedp.Click(chromedp.CSS("#requests tbody tr"))); err != nil {
		t.Fatal(err)
	}
	waitFor(`!document.getElementById("detail").hidden && document.getElementById("detail-title").textContent === "#1 POST /orders → 200"`)
	waitFor(`document.getElementById("req-body").textContent === "<b>bold</b> order" && /X-Test: yes/.test(document.getElementById("req-headers").textContent)`)
	waitFor(`document.getElementById("resp-body").textContent === "POST /orders <b>bold</b> order" && /X-Hit: I/.test(document.getElementById("resp-headers").textContent)`)
	if n, err := chromedp.Run(page, chromedp.Evaluate[int](`document.querySelectorAll("#detail b, #requests b").length`)); err != nil || n != 0 {
		t.Fatalf("markup from a request was interpreted: %d, %v", n, err)
	}
	hits := env.hits.Load()
	if err := chromedp.Do(page, chromedp.Click(chromedp.CSS("#replay"))); err != nil {
		t.Fatal(err)
	}
	waitFor(`document.querySelectorAll("#requests tbody tr").length === 2 && /replay of #1/.test(document.getElementById("detail-note").textContent)`)
	if env.hits.Load() != hits+1 || env.lastBody.Load() != "<b>bold</b> order" {
		t.Fatalf("the page's replay: %d hits, body %q", env.hits.Load()-hits, env.lastBody.Load())
	}
}
