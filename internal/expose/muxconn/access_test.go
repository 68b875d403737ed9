package muxconn_test

import (
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/postern/postern/internal/expose/muxconn"
)

func TestParseAccess(t *testing.T) {
	h := http.Header{}
	h.Set(muxconn.BasicAuthHeader, "alice:pa:ss word")
	h.Add(muxconn.AllowCIDRHeader, "10.0.0.0/8, 192.0.2.7")
	h.Add(muxconn.AllowCIDRHeader, "2001:db8::1/32,::ffff:198.51.100.0/120")
	h.Add(muxconn.ResponseHeaderHeader, "x-frame-options: DENY")
	h.Add(muxconn.ResponseHeaderHeader, "Cache-Control:  no-store ")
	a, err := muxconn.ParseAccess(h)
	if err != nil {
		t.Fatal(err)
	}
	want := muxconn.Access{
		User: "alice", Password: "pa:ss word",
		Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"),
			netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("198.51.100.0/24")},
		Header: http.Header{"X-Frame-Options": {"DENY"}, "Cache-Control": {"no-store"}},
	}
	if !reflect.DeepEqual(a, want) {
		t.Fatalf("ParseAccess = %+v, want %+v", a, want)
	}
	if a, err := muxconn.ParseAccess(http.Header{}); err != nil || !a.Empty() {
		t.Fatalf("no headers: %+v, %v", a, err)
	}
	bad := map[string][2]string{
		"no colon":        {muxconn.BasicAuthHeader, "alice"},
		"empty password":  {muxconn.BasicAuthHeader, "alice:"},
		"empty user":      {muxconn.BasicAuthHeader, ":secret"},
		"control":         {muxconn.BasicAuthHeader, "al\x01ice:secret"},
		"bad range":       {muxconn.AllowCIDRHeader, "10.0.0.0/33"},
		"name":            {muxconn.AllowCIDRHeader, "example.com"},
		"zone":            {muxconn.AllowCIDRHeader, "fe80::1%eth0"},
		"framing":         {muxconn.ResponseHeaderHeader, "Content-Length: 5"},
		"hop":             {muxconn.ResponseHeaderHeader, "transfer-encoding: chunked"},
		"own":             {muxconn.ResponseHeaderHeader, "X-Postern-Error: no"},
		"bad name":        {muxconn.ResponseHeaderHeader, "Bad Name: x"},
		"no value colon":  {muxconn.ResponseHeaderHeader, "X-Thing"},
		"value with ctrl": {muxconn.ResponseHeaderHeader, "X-Thing: a\x00b"},
	}
	for what, kv := range bad {
		h := http.Header{}
		h.Set(kv[0], kv[1])
		_, err := muxconn.ParseAccess(h)
		if err == nil || strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("%s: ParseAccess(%q) = %v, want a one-line error", what, kv[1], err)
		}
		if err != nil && kv[0] == muxconn.BasicAuthHeader && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error quotes the password: %v", what, err)
		}
	}
	many := http.Header{}
	many.Set(muxconn.AllowCIDRHeader, strings.Repeat("10.0.0.1,", muxconn.MaxAllowCIDRs+1))
	if _, err := muxconn.ParseAccess(many); err == nil {
		t.Error("more ranges than the limit were taken")
	}
}

// FuzzParseAccess: any handshake headers either fail with a one-line error
// or give rules that are written back as headers that parse to the same
// rules, with values that a header may carry.
func FuzzParseAccess(f *testing.F) {
	f.Add("alice:secret", "10.0.0.0/8, 192.0.2.7", "X-Frame-Options: DENY")
	f.Add("a:b:c", "::ffff:1.2.3.4/128,2001:db8::/32", "Set-Cookie: a=b; Path=/")
	f.Add(":", ",,", ":")
	f.Add("u\x00:p", "1.2.3.4/0", "X-Postern-A: b")
	f.Fuzz(func(t *testing.T, basic, cidrs, header string) {
		h := http.Header{}
		if basic != "" {
			h.Set(muxconn.BasicAuthHeader, basic)
		}
		h.Set(muxconn.AllowCIDRHeader, cidrs)
		h.Set(muxconn.ResponseHeaderHeader, header)
		a, err := muxconn.ParseAccess(h)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error on two lines: %q", err)
			}
			return
		}
		back := http.Header{}
		a.Write(back)
		for _, vs := range back {
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("written header value %q", v)
				}
			}
		}
		again, err := muxconn.ParseAccess(back)
		if err != nil || !reflect.DeepEqual(a, again) {
			t.Fatalf("round trip: %+v, then %+v, %v", a, again, err)
		}
	})
}
