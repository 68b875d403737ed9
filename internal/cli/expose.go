package cli

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/config"
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

func (c *agentCmd) logger() (*slog.Logger, error) {
	log, err := config.NewLogger(c.a.env.Stderr, c.logLevel, c.logFormat)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return log, nil
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

func (a *app) exposeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "expose [flags] LOCAL-URL",
		Short:   "publish a local service through the server (HTTP, websockets, raw TCP)",
		GroupID: groupAgent,
		Long: `Publishes the service at LOCAL-URL (for example http://localhost:3000)
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

A tcp:// LOCAL-URL publishes raw TCP (SSH, a database, a game server): the
server, run with --expose-tcp-ports LO-HI, gives the name a public port
from that range (--public-port asks for one in particular) and every
connection to it reaches the local service; the agent prints
"Forwarding tcp://SERVER:PORT -> tcp://HOST:PORT". Under a token policy it
also needs "serve" on /tcp/PORT (/tcp/* for any port).

A tls:// LOCAL-URL is a service that speaks TLS itself: TLS connections to
the server's own port whose server name (SNI) is NAME.<expose domain> are
passed to it untouched (the server never sees inside). Under a token
policy it also needs "serve" on /tls/NAME.`,
		Example: `  postern expose --name demo http://localhost:3000
  postern expose --server https://gate.example --name shop --rewrite-host http://127.0.0.1:8000
  postern expose --name ssh tcp://127.0.0.1:22
  postern expose --name db --public-port 25432 tcp://127.0.0.1:5432
  postern expose --name vault tls://127.0.0.1:8200`,
		Args: exactArgs(1, "want exactly one LOCAL-URL"),
	}
	c := a.newAgentCmd(cmd)
	var name string
	var rewriteHost bool
	var publicPort int
	c.fs.String(&name, "name", "`name` to expose the service under (a DNS label; default: a random one)")
	c.fs.Bool(&rewriteHost, "rewrite-host", "send the local service its own host in the Host header, not the public one")
	c.fs.Int(&publicPort, "public-port", "for a tcp:// service, the public `port` to ask the server for (default: any free one of its range)")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := localURL(args[0]); err != nil {
			return err
		}
		log, err := c.logger()
		if err != nil {
			return err
		}
		if name == "" {
			name = randomName()
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		err = cl.Expose(ctx, client.ExposeOptions{
			Name:        name,
			Local:       args[0],
			Port:        publicPort,
			RewriteHost: rewriteHost,
			Logger:      log,
			MinBackoff:  DefaultMinBackoff,
			MaxBackoff:  DefaultMaxBackoff,
			OnReady: func(url string) {
				fmt.Fprintf(a.env.Stdout, "Forwarding %s -> %s\n", url, args[0])
			},
		})
		if err != nil {
			cl := c.call("serve", "/expose/"+name)
			if ce := (*client.Error)(nil); errors.As(err, &ce) && (strings.Contains(ce.Message, "/tcp/") || strings.Contains(ce.Message, "/tls/")) {
				cl.action = "" // a raw agent's grant: the server's message names it
			}
			return explain(ctx, err, cl)
		}
		log.Info("expose: stopped", slog.String("name", name))
		return nil
	}
	return cmd
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
