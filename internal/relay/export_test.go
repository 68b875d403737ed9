package relay

// ProxyOnly makes a hub relay every request through the reverse proxy,
// none on the fast path, for tests that compare the two.
func ProxyOnly(o *Options) { o.proxyOnly = true }
