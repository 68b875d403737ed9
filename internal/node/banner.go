package node

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Banner is what a node says about itself when it starts listening: where
// each capability is, and what a person should know before using it.
type Banner struct {
	Version string
	// Store is the engine's name with its place ("file:postern-data",
	// "memory", "redis"; never a Redis URL, which may hold a password).
	Store string
	Node  string
	// Addr is the listen address, URL the base URL to open on this machine.
	Addr string
	URL  string
	// Endpoints lists the capabilities' URLs on this listener.
	Endpoints []Endpoint
	// Warnings are things that are probably not meant (an open server on
	// every interface).
	Warnings []string
}

// Endpoint is one line of the banner.
type Endpoint struct {
	Name string // "tunnels"
	URL  string
	Note string // how to use it, briefly
}

// BannerInput is what NewBanner needs from a node.
type BannerInput struct {
	Version string
	Store   string
	Node    string
	Addr    net.Addr
	TLS     bool
	// Name, when set, is the name clients reach the node by (the first
	// ACME domain, whose certificate the node serves) instead of its
	// address.
	Name      string
	AtRoot    bool   // channels at the root, the status page at /_postern/
	Domain    string // expose domain
	TokenFile bool   // a token policy is configured
	OpenAuth  bool   // the tunnels' own auth (access token, signatures) is on
	// OpsAddr is --ops-listen's address: the status page and metrics are
	// there, not on Addr.
	OpsAddr net.Addr
}

// NewBanner describes a node listening at in.Addr.
func NewBanner(in BannerInput) Banner {
	b := Banner{Version: in.Version, Store: in.Store, Node: in.Node, Addr: in.Addr.String()}
	scheme := "http"
	if in.TLS {
		scheme = "https"
	}
	host, port := "127.0.0.1", ""
	everywhere, loopback := false, false
	if tcp, ok := in.Addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(tcp.Port)
		ip, _ := netip.AddrFromSlice(tcp.IP)
		ip = ip.Unmap()
		switch {
		case !ip.IsValid() || ip.IsUnspecified():
			everywhere = true
		case ip.IsLoopback():
			loopback = true
			host = ip.String()
		default:
			host = ip.String()
		}
	}
	base := scheme + "://" + net.JoinHostPort(host, port)
	if in.Name != "" {
		base = scheme + "://" + hostPort(in.Name, port, scheme)
	}
	b.URL = base
	page := base + "/"
	channels := base + "/c/"
	if in.AtRoot {
		page, channels = base+"/_postern/", base+"/"
	}
	ops := base
	if in.OpsAddr != nil {
		ops = scheme + "://" + in.OpsAddr.String()
		if tcp, ok := in.OpsAddr.(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
			ops = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(tcp.Port))
		}
		ops = strings.Replace(ops, "https://", "http://", 1) // --ops-listen serves plain HTTP
		page = ops + "/"
	}
	b.Endpoints = []Endpoint{
		{"status page", page, "live status; publish and watch a channel"},
		{"tunnels", base + "/t/", "postern send / recv, or POST and GET /t/NAME"},
		{"inbox", base + "/inbox", "postern inbox, or the echoes clients"},
		{"channels", channels, "postern pub / sub, websockets, Server-Sent Events"},
		{"relay", base + "/client/NAME/", "postern relay --name NAME URL, or http-relay-client; relay clients poll /server/"},
	}
	expose := Endpoint{"expose", base + "/proxy/request/NAME/", "postern expose --name NAME URL"}
	if in.Domain != "" {
		expose.URL = scheme + "://" + hostPort("NAME."+in.Domain, port, scheme) + "/ and " + expose.URL
	}
	b.Endpoints = append(b.Endpoints, expose,
		Endpoint{"health", base + "/healthz", "and /readyz; metrics at " + ops + "/metrics"})
	if everywhere || !loopback {
		b.Warnings = append(b.Warnings, exposureWarning(everywhere, in.TokenFile, in.OpenAuth, port)...)
	}
	return b
}

// exposureWarning is the warning of a listener beyond loopback without a
// token file.
func exposureWarning(everywhere, tokenFile, tunnelAuth bool, port string) []string {
	if tokenFile {
		return nil
	}
	where := "this address"
	if everywhere {
		where = "every interface"
	}
	what := "anyone who can reach it may read and write every tunnel, inbox and channel and use the relay"
	if tunnelAuth {
		what = "anyone who can reach it may read and write every inbox and channel and use the relay (tunnels check their own token)"
	}
	return []string{fmt.Sprintf("listening on %s with no --token-file: %s; add --token-file, or --listen 127.0.0.1:%s to stay on this machine", where, what, port)}
}

// WriteText writes the banner for a person reading the terminal.
func (b Banner) WriteText(w io.Writer) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "postern %s listening on %s (store %s, node %s)\n", b.Version, b.URL, b.Store, b.Node)
	width := 0
	for _, e := range b.Endpoints {
		width = max(width, len(e.Name))
	}
	for _, e := range b.Endpoints {
		fmt.Fprintf(&sb, "  %-*s  %s", width, e.Name, e.URL)
		if e.Note != "" {
			fmt.Fprintf(&sb, "  (%s)", e.Note)
		}
		sb.WriteByte('\n')
	}
	for _, warn := range b.Warnings {
		fmt.Fprintf(&sb, "WARNING: %s\n", warn)
	}
	io.WriteString(w, sb.String())
}

// Log writes the banner as one log record ("postern listening", with the
// listen address, version, store, node and each endpoint's URL), and each
// warning as one.
func (b Banner) Log(log *slog.Logger) {
	attrs := []any{"addr", b.Addr, "url", b.URL, "version", b.Version, "store", b.Store, "node", b.Node}
	for _, e := range b.Endpoints {
		attrs = append(attrs, strings.ReplaceAll(e.Name, " ", "_"), e.URL)
	}
	log.Info("postern listening", attrs...)
	for _, warn := range b.Warnings {
		log.Warn(warn)
	}
}

// hostPort joins name and port, leaving out the scheme's default port.
func hostPort(name, port, scheme string) string {
	if port == "" || scheme == "https" && port == "443" || scheme == "http" && port == "80" {
		return name
	}
	return net.JoinHostPort(name, port)
}
