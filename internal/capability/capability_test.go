package capability_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postern/postern/internal/capability"
)

// TestZeroDeps: a part built with no Deps logs to slog.Default() and
// registers its metrics nowhere, without failing.
func TestZeroDeps(t *testing.T) {
	var d capability.Deps
	if d.Log() != slog.Default() {
		t.Fatal("Log of zero Deps is not slog.Default()")
	}
	d.Register(prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "x"}))
}

// TestRegister: collectors go to the registry handed over.
func TestRegister(t *testing.T) {
	reg := prometheus.NewRegistry()
	d := capability.Deps{Registry: reg}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "parts_total", Help: "parts"})
	d.Register(c)
	c.Inc()
	if n, err := testutil.GatherAndCount(reg, "parts_total"); err != nil || n != 1 {
		t.Fatalf("%d series, %v", n, err)
	}
}

// TestDefault: zeros take the default, set values stay, negative ones too
// (Validate refuses them).
func TestDefault(t *testing.T) {
	zero, set, neg := time.Duration(0), 5*time.Second, -time.Second
	for _, p := range []*time.Duration{&zero, &set, &neg} {
		capability.Default(p, time.Minute)
	}
	if zero != time.Minute || set != 5*time.Second || neg != -time.Second {
		t.Fatalf("%v %v %v", zero, set, neg)
	}
	s := ""
	capability.Default(&s, "dflt")
	if s != "dflt" {
		t.Fatal(s)
	}
}
