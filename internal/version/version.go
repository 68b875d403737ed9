// Package version reports which build of postern is running.
package version

import (
	"runtime/debug"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// version is set at link time: -ldflags "-X github.com/postern/postern/internal/version.version=v1.2.3".
var version string

var info = sync.OnceValues(func() (string, string) {
	v, rev := version, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	return v, rev
})

// Version is the release version, or "dev".
func Version() string { v, _ := info(); return v }

// Revision is the VCS revision the binary was built from, if known.
func Revision() string { _, r := info(); return r }

// Collector exports postern_build_info{version, revision} = 1.
func Collector() prometheus.Collector {
	v, r := info()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "postern_build_info",
		Help:        "Build of the running postern; always 1.",
		ConstLabels: prometheus.Labels{"version": v, "revision": r},
	})
	g.Set(1)
	return g
}
