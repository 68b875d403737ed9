package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/expose/muxconn"
)

// agentCmd is a client verb that runs an agent: logs besides the client
// flags.
type agentCmd struct {
	*clientCmd
	logLevel, logFormat string
}

func (a *app) newAgentCmd(cmd *cobra.Command) *agentCmd {
	c := &agentCmd{clientCmd: a.newClientCmd(cmd), logLevel: config.DefaultLogLevel, logFormat: config.DefaultLogFormat}
	c.fs.String(&c.logLevel, "log-level", "log `level`: debug, info, warn or error")
	c.fs.String(&c.logFormat, "log-format", "log `format`: text or json")
	return c
}

// logger is the agent's logger, writing to standard error in batches (see
// batchWriter): the line per request would otherwise cost the agent a
// write per request. The caller flushes the batchWriter before it
// returns, so no line is lost when the agent stops.
func (c *agentCmd) logger() (*slog.Logger, *batchWriter, error) {
	w := newBatchWriter(c.a.env.Stderr, logBatchDelay)
	log, err := config.NewLogger(w, c.logLevel, c.logFormat)
	if err != nil {
		return nil, nil, usagef("%v", err)
	}
	return log, w, nil
}

// localURL checks the URL of the local service.
func localURL(s string) error {
	u, err := url.Parse(s)
	raw := u != nil && (u.Scheme == "tcp" || u.Scheme == "tls")
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && !raw) || u.Host == "" || (raw && u.Port() == "") {
		return usagef("LOCAL-URL %q: want http://host:port, https://host:port, tcp://host:port or tls://host:port", s)
	}
	return nil
}

// The help of `postern expose`.
const (
	exposeLong = `Publishes the service at LOCAL-URL (for example http://localhost:3000)
through a postern server: users reach it at NAME.<expose domain> (or at
/proxy/request/NAME/ on the server when it has no expose domain). The agent
opens one websocket to the server and carries every request, streamed
bodies and websockets included, over it. It prints the public URL, logs one
line per request, reconnects with backoff and jitter when the connection
drops, and stops cleanly on SIGINT or SIGTERM.

With a token policy on the server the agent needs a token granted "serve"
on /expose/NAME; without one, the server takes agents from its own host only
unless it runs with --expose-anonymous-agents. Two agents with one name
share its requests.

Access rules, enforced by the server before a request reaches the agent:
--basic-auth user:password asks users for a password (401 until they give
it; the server removes it before the service sees the request; prefer
POSTERN_BASIC_AUTH, flags show in ps), --allow-cidr serves only users from
the listed ranges (403 for others; repeat it or separate with commas), and
--response-header 'Name: value' adds a header to every answer (repeatable).
A token file may require or forbid each of them.

--inspect 127.0.0.1:4040 serves a page there listing the last requests and
answers with their headers and bodies (up to 64 KiB each), where each can be
sent to the local service again (also GET /api/requests and
POST /api/requests/ID/replay, with Content-Type: application/json). It
shows everything users send, passwords included: it takes only loopback
addresses unless --inspect-public.

A tcp:// LOCAL-URL publishes raw TCP (SSH, a database, a game server): the
server, run with --expose-tcp-ports LO-HI, gives the name a public port
from that range (--public-port asks for one in particular) and every
connection to it reaches the local service; the agent prints
"Forwarding tcp://SERVER:PORT -> tcp://HOST:PORT". Under a token policy it
also needs "serve" on /tcp/PORT (/tcp/* for any port).

A tls:// LOCAL-URL is a service that speaks TLS itself: TLS connections to
the server's own port whose server name (SNI) is NAME.<expose domain> are
passed to it untouched (the server never sees inside). Under a token
policy it also needs "serve" on /tls/NAME.`
	exposeExample = `  postern expose --name demo http://localhost:3000
  postern expose --server https://gate.example --name shop --rewrite-host http://127.0.0.1:8000
  POSTERN_BASIC_AUTH=ann:s3cret postern expose --name staging --allow-cidr 203.0.113.0/24 http://localhost:3000
  postern expose --name docs --response-header 'Cache-Control: no-store' http://localhost:8000
  postern expose --name demo --inspect 127.0.0.1:4040 http://localhost:3000
  postern expose --name ssh tcp://127.0.0.1:22
  postern expose --name db --public-port 25432 tcp://127.0.0.1:5432
  postern expose --name vault tls://127.0.0.1:8200`
)

func (a *app) exposeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "expose [flags] LOCAL-URL",
		Short:   "publish a local service through the server (HTTP, websockets, raw TCP)",
		GroupID: groupAgent,
		Long:    exposeLong,
		Example: exposeExample,
		Args:    exactArgs(1, "want exactly one LOCAL-URL"),
	}
	c := a.newAgentCmd(cmd)
	var name, basicAuth, inspect string
	var rewriteHost, inspectPublic bool
	var publicPort int
	var allowCIDR, respHeaders []string
	c.fs.String(&name, "name", "`name` to expose the service under (a DNS label; default: a random one)")
	c.fs.Bool(&rewriteHost, "rewrite-host", "send the local service its own host in the Host header, not the public one")
	c.fs.String(&basicAuth, "basic-auth", "`user:password` users must give (HTTP basic auth) before a request reaches the service")
	c.fs.Repeated(&allowCIDR, "allow-cidr", "serve only users from these address `ranges` (10.0.0.0/8, 2001:db8::/32, 192.0.2.7; repeatable)")
	c.fs.Lines(&respHeaders, "response-header", "`'Name: value'` to add to every answer (repeatable; in the environment one per line)")
	c.fs.String(&inspect, "inspect", "serve the request inspector on this `host:port` (127.0.0.1:4040)")
	c.fs.Bool(&inspectPublic, "inspect-public", "let --inspect take an address that is not loopback (it shows every request, credentials included)")
	c.fs.Int(&publicPort, "public-port", "for a tcp:// service, the public `port` to ask the server for (default: any free one of its range)")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := localURL(args[0]); err != nil {
			return err
		}
		log, logw, err := c.logger()
		if err != nil {
			return err
		}
		defer logw.Flush()
		if name == "" {
			name = randomName()
		}
		headers, err := accessFlags(basicAuth, allowCIDR, respHeaders)
		if err != nil {
			return err
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		ins, err := a.startInspector(inspect, inspectPublic, log)
		if err != nil {
			return err
		}
		defer ins.stop()
		ctx := cmd.Context()
		err = cl.Expose(ctx, client.ExposeOptions{
			Inspector:       ins.inspector(),
			Name:            name,
			Local:           args[0],
			Port:            publicPort,
			RewriteHost:     rewriteHost,
			BasicAuth:       basicAuth,
			AllowCIDR:       allowCIDR,
			Logger:          log,
			ResponseHeaders: headers,
			MinBackoff:      DefaultMinBackoff,
			MaxBackoff:      DefaultMaxBackoff,
			OnReady: func(url string) {
				fmt.Fprintf(a.env.Stdout, "Forwarding %s -> %s\n", url, args[0])
			},
		})
		if err != nil {
			cl := c.call("serve", "/expose/"+name)
			if ce := (*client.Error)(nil); errors.As(err, &ce) && (strings.Contains(ce.Message, "/tcp/") || strings.Contains(ce.Message, "/tls/")) {
				cl.action = "" // a raw agent's grant: the server's message names it
			}
			return explainExpose(ctx, err, cl)
		}
		log.Info("expose: stopped", slog.String("name", name))
		return nil
	}
	return cmd
}

// explainExpose tells why the agent stopped: explain's reasons, and a
// token granted the name on conditions its access rules do not meet.
func explainExpose(ctx context.Context, err error, c call) error {
	var ce *client.Error
	if errors.As(err, &ce) && ce.StatusCode == http.StatusForbidden && strings.HasPrefix(ce.Message, "the grant of serve on ") {
		return &exitError{code: ExitDenied, msg: fmt.Sprintf("403 %s (--basic-auth, --allow-cidr, --response-header)", ce.Message)}
	}
	return explain(ctx, err, c)
}

// inspectorServer is the --inspect page's server (nil: none).
type inspectorServer struct {
	ins    *client.Inspector
	srv    *http.Server
	served chan struct{}
}

// startInspector serves an inspector on addr ("" : none), refusing an
// address that is not loopback unless public.
func (a *app) startInspector(addr string, public bool, log *slog.Logger) (*inspectorServer, error) {
	if addr == "" {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usagef("--inspect %q: want host:port, such as 127.0.0.1:4040", addr)
	}
	ip, _ := netip.ParseAddr(host)
	if !public && host != "localhost" && !ip.IsLoopback() {
		return nil, usagef("--inspect %s is not a loopback address: the inspector shows every request, credentials included; use 127.0.0.1:PORT, or add --inspect-public to serve it there anyway", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, &exitError{code: ExitError, msg: fmt.Sprintf("--inspect: cannot listen on %s: %v", addr, oneLine(err.Error()))}
	}
	s := &inspectorServer{ins: client.NewInspector(client.InspectorOptions{}), served: make(chan struct{})}
	s.srv = &http.Server{Handler: s.ins, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() { defer close(s.served); s.srv.Serve(ln) }()
	fmt.Fprintf(a.env.Stdout, "Inspecting http://%s\n", ln.Addr())
	return s, nil
}

func (s *inspectorServer) inspector() *client.Inspector {
	if s == nil {
		return nil
	}
	return s.ins
}

// stop closes the inspector's server: idle connections (a page left open
// just stops refreshing) at once, a replay in progress within a second.
func (s *inspectorServer) stop() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		s.srv.Close()
	}
	<-s.served
	s.ins.Close()
}

// accessFlags checks the access rules' flags as the server will and
// returns the response headers.
func accessFlags(basicAuth string, allowCIDR, respHeaders []string) (http.Header, error) {
	if basicAuth != "" {
		if _, _, err := muxconn.ParseBasicAuth(basicAuth); err != nil {
			return nil, usagef("--basic-auth: %s", strings.TrimPrefix(err.Error(), "basic auth: "))
		}
	}
	if _, err := muxconn.ParseCIDRs(allowCIDR); err != nil {
		return nil, usagef("--allow-cidr: %v", err)
	}
	var h http.Header
	for _, s := range respHeaders {
		name, value, err := muxconn.ParseResponseHeader(s)
		if err != nil {
			return nil, usagef("--response-header: %s", strings.TrimPrefix(err.Error(), "response header "))
		}
		if h == nil {
			h = http.Header{}
		}
		h.Add(name, value)
	}
	return h, nil
}

// randomName is a name of 10 letters and digits, starting with a letter.
func randomName() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 10)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	b[0] = alphabet[int(b[0])%26]
	return string(b)
}
