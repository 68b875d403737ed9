package expose

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/httpapi"
)

// Raw TCP: a native agent that asks for it in its handshake gets a public
// TCP port from Options.TCPPorts, one per name (the agents of one name
// share it, as they share an HTTP name); each user connection to the port
// becomes one yamux stream to an agent, which splices it to its local
// service. The port closes when the name's last agent goes, so a port
// with no agent refuses connections and a killed agent frees its port.

// Handshake fields of a native agent beyond its name (query parameters of
// /agent); an agent that sends none is an HTTP agent.
const (
	// AgentProtoParam is what the agent carries: "http" (the default),
	// "tcp" (raw TCP on a public port) or "tls" (TLS connections passed
	// through by server name, NAME.<domain>, on the node's listener).
	AgentProtoParam = "proto"
	// AgentPortParam, with proto=tcp, is the public port the agent asks
	// for (absent: any free port of the range).
	AgentPortParam = "port"
)

// Values of AgentProtoParam.
const (
	protoHTTP = "http"
	protoTCP  = "tcp"
)

// agentRequest is what a native agent's handshake asks for beyond a name.
type agentRequest struct {
	proto string
	port  int // proto tcp: the port asked for; 0: any
}

// parseAgentRequest reads the handshake fields of q (untrusted: fuzzed).
func parseAgentRequest(q url.Values) (agentRequest, *httpapi.Error) {
	req := agentRequest{proto: protoHTTP}
	for _, k := range []string{AgentProtoParam, AgentPortParam} {
		if len(q[k]) > 1 {
			return req, httpapi.Errorf(http.StatusBadRequest, "agent handshake: %s given %d times, want it once", k, len(q[k]))
		}
	}
	if p := q.Get(AgentProtoParam); p != "" {
		if p != protoHTTP && p != protoTCP && p != protoTLS {
			return req, httpapi.Errorf(http.StatusBadRequest, "agent handshake: %s=%.20q: want http, tcp or tls", AgentProtoParam, p)
		}
		req.proto = p
	}
	if v, ok := q[AgentPortParam]; ok {
		if req.proto != protoTCP {
			return req, httpapi.Errorf(http.StatusBadRequest, "agent handshake: %s needs %s=tcp", AgentPortParam, AgentProtoParam)
		}
		p, err := parsePort(v[0])
		if err != nil {
			return req, httpapi.Errorf(http.StatusBadRequest, "agent handshake: %s=%.20q: %v", AgentPortParam, v[0], err)
		}
		req.port = p
	}
	return req, nil
}

// tcpBinding returns the binding of an agent asking for raw TCP (port:
// the one it asks for, 0 for any): a port of the range, under a token
// policy one its handshake is granted serve on /tcp/PORT for.
func (s *Service) tcpBinding(r *http.Request, name string, port int) (binding, *httpapi.Error) {
	if s.tcp == nil {
		return nil, httpapi.Errorf(http.StatusBadRequest, "this server exposes no raw TCP: it runs without --expose-tcp-ports")
	}
	b := &tcpBinding{ports: s.tcp, name: name, want: port, host: s.publicHost(r)}
	if s.policy.Enabled() {
		b.allowed = func(p int) bool { return s.policy.Allow(r, auth.Serve, tcpResource(p)) }
	}
	return b, nil
}

// tcpResource is the token policy's resource of public port p.
func tcpResource(p int) string { return "/tcp/" + strconv.Itoa(p) }

// publicHost is the host name users reach this server by, as seen from
// request r (the base URL's, when configured).
func (s *Service) publicHost(r *http.Request) string {
	hostport := r.Host
	if s.opts.BaseURL != "" {
		if u, err := url.Parse(s.opts.BaseURL); err == nil {
			hostport = u.Host
		}
	}
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// tcpBinding binds a raw TCP agent to a public port.
type tcpBinding struct {
	ports   *tcpPorts
	name    string
	want    int
	host    string
	allowed func(port int) bool // nil: every port of the range
	port    *tcpPort
}

func (b *tcpBinding) attach(a *nativeAgent) (string, *httpapi.Error) {
	p, err := b.ports.claim(b.name, b.want, b.allowed, a)
	if err != nil {
		return "", err
	}
	b.port = p
	return "tcp://" + net.JoinHostPort(b.host, strconv.Itoa(p.port)), nil
}

func (b *tcpBinding) detach(a *nativeAgent) { b.ports.release(b.port, a) }

// tcpPorts hands out the public ports of the range to the names of raw
// TCP agents and carries their users' connections. It owns the listeners
// and, through its carrier, the user connections: close closes them all,
// wait waits for their goroutines.
type tcpPorts struct {
	rawCarrier // its mu guards the maps too

	lo, hi int
	host   string
	open   prometheus.Gauge // ports open

	byName map[string]*tcpPort
	byPort map[int]*tcpPort
	last   map[int]string // the name each port was last held by
	next   int            // where the search for a free port starts
}

// tcpPort is one public port, held by the agents of one name.
type tcpPort struct {
	rawSet
	name string
	port int
	ln   net.Listener
}

func newTCPPorts(o Options, log *slog.Logger, m *metrics) *tcpPorts {
	if o.tcpLo == 0 {
		return nil
	}
	return &tcpPorts{
		rawCarrier: rawCarrier{maxConns: o.TCPMaxConnections, log: log, count: m.raw(transportTCP)},
		lo:         o.tcpLo, hi: o.tcpHi, host: o.TCPHost, open: m.ports, next: o.tcpLo,
		byName: map[string]*tcpPort{}, byPort: map[int]*tcpPort{}, last: map[int]string{},
	}
}

// Refusals of a port.
var errTCPClosing = httpapi.ErrShuttingDown

// claim binds agent a to name's port: the one the name's other agents
// hold, else want (0: a free one of the range, the one the name held last
// when it is free). allowed (nil: all) says which ports a may get.
func (ps *tcpPorts) claim(name string, want int, allowed func(int) bool, a *nativeAgent) (*tcpPort, *httpapi.Error) {
	if allowed == nil {
		allowed = func(int) bool { return true }
	}
	if want != 0 && (want < ps.lo || want > ps.hi) {
		return nil, httpapi.Errorf(http.StatusBadRequest, "port %d is outside this server's TCP ports %s: ask for one of them, or for none", want, ps.rangeText())
	}
	if want != 0 && !allowed(want) {
		return nil, httpapi.Errorf(http.StatusForbidden, "not granted serve on %s: ask for another port, or for none", tcpResource(want))
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closed {
		return nil, errTCPClosing
	}
	if p := ps.byName[name]; p != nil {
		switch {
		case want != 0 && want != p.port:
			return nil, httpapi.Errorf(http.StatusConflict, "agent name %q already has TCP port %d (its other agents hold it): ask for that port, or for none", name, p.port)
		case !allowed(p.port):
			return nil, httpapi.Errorf(http.StatusForbidden, "agent name %q has TCP port %d, and this agent is not granted serve on %s", name, p.port, tcpResource(p.port))
		}
		p.join(a)
		return p, nil
	}
	if want != 0 {
		if other := ps.byPort[want]; other != nil {
			return nil, httpapi.Errorf(http.StatusConflict, "TCP port %d is held by agent %q: ask for another port, or for none", want, other.name)
		}
		ln, err := ps.listen(want)
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, httpapi.Errorf(http.StatusConflict, "TCP port %d is in use by another program on the server: ask for another port, or for none", want)
		}
		if err != nil {
			return nil, httpapi.Errorf(http.StatusServiceUnavailable, "TCP port %d: %v", want, err)
		}
		return ps.add(name, want, ln, a), nil
	}
	granted := false
	for _, p := range ps.candidates(name) {
		if !allowed(p) {
			continue
		}
		granted = true
		if ps.byPort[p] != nil {
			continue
		}
		ln, err := ps.listen(p)
		if err != nil {
			continue // in use by another program, or not ours to take
		}
		ps.next = p + 1
		return ps.add(name, p, ln, a), nil
	}
	if !granted {
		return nil, httpapi.Errorf(http.StatusForbidden, "not granted serve on /tcp/PORT for any port of %s: ask the operator for a grant", ps.rangeText())
	}
	return nil, httpapi.Errorf(http.StatusServiceUnavailable, "no free TCP port: all of %s are taken (by agents or other programs); retry later, or ask the operator for a wider --expose-tcp-ports", ps.rangeText())
}

// candidates lists the ports of the range in the order a new name tries
// them: the one name held last, then each from where the last search
// ended, so that a port just freed is the last one handed to another
// name (its old agent may be reconnecting).
func (ps *tcpPorts) candidates(name string) []int {
	out := make([]int, 0, ps.hi-ps.lo+2)
	for p, n := range ps.last {
		if n == name {
			out = append(out, p)
		}
	}
	if ps.next > ps.hi {
		ps.next = ps.lo
	}
	for p := ps.next; p <= ps.hi; p++ {
		out = append(out, p)
	}
	for p := ps.lo; p < ps.next; p++ {
		out = append(out, p)
	}
	return out
}

func (ps *tcpPorts) rangeText() string {
	if ps.lo == ps.hi {
		return fmt.Sprintf("port %d", ps.lo)
	}
	return fmt.Sprintf("%d-%d", ps.lo, ps.hi)
}

func (ps *tcpPorts) listen(port int) (net.Listener, error) {
	return net.Listen("tcp", net.JoinHostPort(ps.host, strconv.Itoa(port)))
}

// add records port p of name, held by a, and starts accepting on it.
// ps.mu is held.
func (ps *tcpPorts) add(name string, port int, ln net.Listener, a *nativeAgent) *tcpPort {
	p := &tcpPort{name: name, port: port, ln: ln}
	p.join(a)
	ps.byName[name], ps.byPort[port] = p, p
	ps.last[port] = name
	ps.open.Inc()
	ps.wg.Add(1)
	go ps.accept(p)
	ps.log.Info("expose TCP port open", "name", name, "port", port)
	return p
}

// release unbinds agent a from p; the port closes with its last agent
// (its users' connections end with the agent's session).
func (ps *tcpPorts) release(p *tcpPort, a *nativeAgent) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p.leave(a) || ps.byPort[p.port] != p {
		return
	}
	delete(ps.byName, p.name)
	delete(ps.byPort, p.port)
	p.ln.Close()
	ps.open.Dec()
	ps.log.Info("expose TCP port closed", "name", p.name, "port", p.port)
}

// accept takes p's user connections until its listener closes.
func (ps *tcpPorts) accept(p *tcpPort) {
	defer ps.wg.Done()
	var backoff time.Duration
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little, as
			// net/http's server does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			ps.log.Warn("expose TCP port: accept failed", "port", p.port, "err", err, "retry in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		ps.take(&p.rawSet, c)
	}
}

// close closes every port and resets every user connection; the agents'
// bindings still release them.
func (ps *tcpPorts) close() {
	ps.mu.Lock()
	for _, p := range ps.byPort {
		p.ln.Close()
	}
	ps.mu.Unlock()
	ps.closeConns()
}
