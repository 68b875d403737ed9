package tunnel

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/httpapi"
)

func TestParseRoute(t *testing.T) {
	cases := map[string]route{
		"/t/x":                            {kind: routeTunnel, id: "x"},
		"/t/x/":                           {kind: routeTunnel, id: "x"},
		"/t/x/poll":                       {kind: routePoll, id: "x"},
		"/t/x/len":                        {kind: routeLen, id: "x"},
		"/t/x/all":                        {kind: routeAll, id: "x"},
		"/t/x/12-3":                       {kind: routeMessage, id: "x"},
		"/t/x/12-3/":                      {kind: routeMessage, id: "x"},
		"/t/x/12-3/reply":                 {kind: routeReply, id: "x"},
		"/t/x/12-3/reply/":                {kind: routeReply, id: "x"},
		"/t/x/12-3/reply/poll":            {kind: routeReplyPoll, id: "x"},
		"/t/x/12-3/reply/poll/":           {kind: routeReplyPoll, id: "x"},
		"/t/Ab-_9/1-1":                    {kind: routeMessage, id: "Ab-_9"},
		"/t/poll/poll":                    {kind: routePoll, id: "poll"},
		"/t/" + strings.Repeat("z", 1024): {kind: routeTunnel, id: strings.Repeat("z", 1024)},
	}
	for path, want := range cases {
		got, ok := parseRoute(path, Prefix)
		if !ok || got.kind != want.kind || got.id != want.id {
			t.Errorf("parseRoute(%q) = %+v %v, want %+v", path, got, ok, want)
		}
	}
	for _, path := range []string{"", "/", "/t", "/t/", "/t//", "/x/y", "/t/x/poll/", "/t/x/len/", "/t/x/all/",
		"/t/x/1-1//", "/t/x/1/reply", "/t/x/1-1/replies", "/t/x/1-1/reply/poll/x", "/t/ x", "/t/x y",
		"/t/" + strings.Repeat("z", 1025), "/t/é", "/t/x/y/z"} {
		if got, ok := parseRoute(path, Prefix); ok {
			t.Errorf("parseRoute(%q) = %+v, want malformed", path, got)
		}
	}
}

func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{"/t/x", "/t/x/", "/t/x/poll", "/t/x/1-1/reply/poll/", "/t/x/1-1//", "/t/é", "/t/a/99999999999999999-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		rt, ok := parseRoute(path, Prefix)
		if !ok {
			// A refused path is explained in one header-safe line.
			why := httpapi.HeaderText(whyMalformed(path, Prefix))
			if why == "" || len(why) > 300 || strings.ContainsFunc(why, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
				t.Fatalf("%q: explanation %q", path, why)
			}
			return
		}
		// Whatever parses names a valid tunnel and a route that rebuilds
		// into a path that parses the same way.
		if !ValidID(rt.id) {
			t.Fatalf("%q parsed to invalid id %q", path, rt.id)
		}
		rebuilt := Prefix + rt.id
		switch rt.kind {
		case routePoll:
			rebuilt += "/poll"
		case routeLen:
			rebuilt += "/len"
		case routeAll:
			rebuilt += "/all"
		case routeMessage:
			rebuilt += "/" + rt.mid.String()
		case routeReply:
			rebuilt += "/" + rt.mid.String() + "/reply"
		case routeReplyPoll:
			rebuilt += "/" + rt.mid.String() + "/reply/poll"
		}
		again, ok := parseRoute(rebuilt, Prefix)
		if !ok || again != rt {
			t.Fatalf("%q -> %+v -> %q -> %+v %v", path, rt, rebuilt, again, ok)
		}
	})
}

// TestPollTimeoutParameter: the original's seconds (floored, clamped),
// and Go durations, which the original silently read as absent (issue 21:
// ?timeout=5s waited the default 30 s).
func TestPollTimeoutParameter(t *testing.T) {
	tu := &Tunnels{opts: Options{PollTimeout: 30 * time.Second, MaxPollTimeout: time.Minute}}
	for q, want := range map[string]time.Duration{
		"":        30 * time.Second,
		"5":       5 * time.Second,
		"5.9":     5 * time.Second,
		"0":       0,
		"-3":      0,
		"100":     time.Minute,
		"5s":      5 * time.Second,
		"1m30s":   time.Minute,
		"500ms":   500 * time.Millisecond,
		"0s":      0,
		"-1s":     0,
		"soon":    30 * time.Second,
		"5 s":     30 * time.Second,
		"1e3":     time.Minute,
		"1h":      time.Minute,
		"0.0001s": 100 * time.Microsecond,
	} {
		if got := tu.pollTimeout(url.Values{"timeout": {q}}); got != want {
			t.Errorf("timeout=%q: %v, want %v", q, got, want)
		}
	}
}

func TestParseSignature(t *testing.T) {
	digest := sha256.Sum256([]byte("x"))
	hexd := hex.EncodeToString(digest[:])
	for _, h := range []string{"sha256=" + hexd, "SHA256=" + hexd, "sha256=" + strings.ToUpper(hexd)} {
		if sig, ok := ParseSignature(h); !ok || string(sig) != string(digest[:]) {
			t.Errorf("ParseSignature(%q) refused", h)
		}
	}
	for _, h := range []string{"", "sha256=", "sha256=" + hexd[:62], "sha256=" + hexd + "00", "sha1=" + hexd[:40],
		"sha256:" + hexd, "sha256=" + hexd[:62] + "zz", " sha256=" + hexd} {
		if _, ok := ParseSignature(h); ok {
			t.Errorf("ParseSignature(%q) accepted", h)
		}
	}
}

func FuzzParseSignature(f *testing.F) {
	d := sha256.Sum256(nil)
	for _, s := range []string{"sha256=" + hex.EncodeToString(d[:]), "sha1=abc", "sha256=zz", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		sig, ok := ParseSignature(h)
		if !ok {
			return
		}
		if len(sig) != sha256.Size {
			t.Fatalf("ParseSignature(%q) gave %d bytes", h, len(sig))
		}
		if !strings.EqualFold(h, "sha256="+hex.EncodeToString(sig)) {
			t.Fatalf("ParseSignature(%q) does not round-trip", h)
		}
	})
}

func FuzzValidID(f *testing.F) {
	for _, s := range []string{"demo", "a-b_c", "a b", "é", strings.Repeat("a", 1025)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidID(s) {
			return
		}
		if len(s) == 0 || len(s) > MaxIDLen || strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
			t.Fatalf("ValidID(%q) = true", s)
		}
		if _, ok := parseRoute(Prefix+s, Prefix); !ok {
			t.Fatalf("valid id %q does not route", s)
		}
	})
}
