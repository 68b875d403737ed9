package expose

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/internal/capability"
	"github.com/postern/postern/internal/expose/brickchain"
)

// Defaults of Options for native agents; the Brickchain transport's are in
// internal/expose/brickchain.
const (
	// DefaultAgentKeepAlive is the native agents' yamux keep-alive.
	DefaultAgentKeepAlive = 15 * time.Second
	// DefaultStreamWindow is the native agents' yamux stream window: large
	// enough for one stream to fill a fast link.
	DefaultStreamWindow = 4 << 20
	// DefaultTCPMaxConnections is how many user connections one public
	// TCP port carries at once; one more is reset at accept.
	DefaultTCPMaxConnections = 1024
)

// Options configures the expose capability.
type Options struct {
	// Domain, when set, routes requests whose Host is NAME.Domain to the
	// agent NAME, and names agents' public URLs.
	Domain string
	// BaseURL is this server's public base URL ("https://proxy.example.com").
	// Brickchain mandate tokens must name a uri that starts with it; empty:
	// the scheme and Host the agent connected with.
	BaseURL string

	// Brickchain configures the Brickchain agents' transport: its limits,
	// timeouts and the queue core remembering mandate tokens
	// (brickchain.DefaultOptions has the original's figures).
	Brickchain brickchain.Options

	// AgentKeepAlive is the native agents' keep-alive interval; zero:
	// DefaultAgentKeepAlive.
	AgentKeepAlive time.Duration
	// StreamWindow is the native agents' yamux stream window in bytes;
	// zero: DefaultStreamWindow.
	StreamWindow int
	// AnonymousAgents lets native agents without a scoped token claim a
	// name from any address when no token policy is configured. Without
	// it (and without a policy) only agents on loopback addresses may:
	// an agent behind a trusted proxy (capability.Deps.TrustedProxies)
	// must itself be on this host, and a handshake a proxy on this host
	// passed on without being trusted is refused.
	//
	// With a policy (capability.Deps.Policy) a native agent needs "serve"
	// on /expose/NAME, a Brickchain registration "serve" on /expose/<id>
	// (a token on the subscribe handshake, or an anonymous grant naming
	// the id), a user request "call" on /expose/NAME (grant it to
	// anonymous for public sites). Without one, user requests and
	// Brickchain registrations are open, as in the original.
	AnonymousAgents bool

	// TCPPorts is the range of public ports ("LO-HI", or one port) that
	// native agents exposing raw TCP (`postern expose tcp://HOST:PORT`)
	// get one of, one port per name; empty: no raw TCP. Under a token
	// policy an agent also needs "serve" on /tcp/PORT for the port it gets
	// (/tcp/* for any port of the range), and asking for one port in
	// particular needs that port's grant.
	TCPPorts string
	// TCPHost is the address the TCP ports listen on; empty: every
	// address. The node sets it to the host of its listen address.
	TCPHost string
	// TCPMaxConnections caps the user connections one TCP port, or one
	// TLS passthrough name, carries at once (more are reset at accept);
	// zero: DefaultTCPMaxConnections.
	TCPMaxConnections int

	tcpLo, tcpHi int // TCPPorts, parsed by Validate
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{
		Brickchain:     brickchain.DefaultOptions(),
		AgentKeepAlive: DefaultAgentKeepAlive,
		StreamWindow:   DefaultStreamWindow,
	}
}

// Validate fills the settings left zero with their defaults and reports
// the first one that makes no sense.
func (o *Options) Validate() error {
	o.Domain = strings.ToLower(strings.Trim(strings.TrimSpace(o.Domain), "."))
	if o.Domain != "" && (strings.ContainsAny(o.Domain, "/: ") || strings.Contains(o.Domain, "..")) {
		return fmt.Errorf("expose domain %q: want a DNS name such as tunnels.example.com", o.Domain)
	}
	o.BaseURL = strings.TrimSpace(o.BaseURL)
	if o.BaseURL != "" && !strings.HasPrefix(o.BaseURL, "http://") && !strings.HasPrefix(o.BaseURL, "https://") {
		return fmt.Errorf("expose base URL %q: want http:// or https://", o.BaseURL)
	}
	capability.Default(&o.AgentKeepAlive, DefaultAgentKeepAlive)
	capability.Default(&o.StreamWindow, DefaultStreamWindow)
	if o.StreamWindow < 256<<10 || o.AgentKeepAlive < 0 {
		return errors.New("expose: the stream window is at least 256 KiB, the agent keep-alive not negative")
	}
	var err error
	if o.tcpLo, o.tcpHi, err = ParsePortRange(o.TCPPorts); err != nil {
		return err
	}
	capability.Default(&o.TCPMaxConnections, DefaultTCPMaxConnections)
	return o.Brickchain.Validate()
}

// ParsePortRange parses a range of TCP ports, "LO-HI" or one port "P"
// (1 to 65535, LO <= HI); "" is no range (0, 0).
func ParsePortRange(s string) (lo, hi int, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, 0, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = parsePort(a); err == nil {
		hi = lo
		if isRange {
			hi, err = parsePort(b)
		}
	}
	if err != nil || lo > hi {
		return 0, 0, fmt.Errorf("expose TCP ports %q: want LO-HI, two port numbers from 1 to 65535 (LO <= HI), or one port", s)
	}
	return lo, hi, nil
}

// parsePort parses a port number from 1 to 65535, in plain decimal digits.
func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, errBadPort
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, errBadPort
	}
	return p, nil
}

var errBadPort = errors.New("not a port number from 1 to 65535")
