package certs_test

import (
	"context"
	"strings"
	"testing"

	"github.com/postern/postern/internal/certs"
)

type noDNS struct{}

func (noDNS) SetTXT(context.Context, string, string) error    { return nil }
func (noDNS) DeleteTXT(context.Context, string, string) error { return nil }

// TestOptionsValidate: defaults are filled, names normalized, and
// settings that make no sense are named.
func TestOptionsValidate(t *testing.T) {
	o := certs.Options{Domains: []string{" Gate.Example. "}, Dir: "d"}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.CA != certs.DefaultCA || o.RetryAfter != certs.DefaultRetryAfter || o.RenewBefore != certs.DefaultRenewBefore || o.Domains[0] != "gate.example" {
		t.Fatalf("validated: %+v", o)
	}
	off := certs.Options{}
	if err := off.Validate(); err != nil || off.Enabled() {
		t.Fatalf("no domains: %v, enabled %v", err, off.Enabled())
	}
	for _, c := range []struct {
		o    certs.Options
		want string
	}{
		{certs.Options{Domains: []string{"gate.example"}}, "--acme-dir"},
		{certs.Options{Domains: []string{"*.gate.example"}, Dir: "d"}, "invalid --acme-domain"},
		{certs.Options{Domains: []string{"localhost"}, Dir: "d"}, "invalid --acme-domain"},
		{certs.Options{Domains: []string{"gate.example"}, Dir: "d", DNS: noDNS{}}, "expose domain"},
	} {
		if err := c.o.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
}
