package cli

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/config"
)

const exposeUsage = `Usage: postern expose [flags] LOCAL-URL

Publishes the service at LOCAL-URL (for example http://localhost:3000)
through a postern server: users reach it at NAME.<expose domain> (or at
/proxy/request/NAME/ on the server when it has no expose domain). The agent
opens one websocket to the server and carries every request, streamed
bodies and websockets included, over it. It prints the public URL, logs one
line per request, reconnects with backoff when the connection drops, and
stops cleanly on SIGINT or SIGTERM.

With a token policy on the server the agent needs a token granted "serve"
on /expose/NAME; without one, the server takes agents from its own host only
unless it runs with --expose-anonymous-agents. Two agents with one name
share its requests.
`

func runExpose(ctx context.Context, env Env, args []string) error {
	fs := config.NewFlagSet("expose")
	var cf clientFlags
	cf.register(fs)
	var name, logLevel, logFormat string
	var rewriteHost bool
	logLevel, logFormat = config.DefaultLogLevel, config.DefaultLogFormat
	fs.String(&name, "name", "`name` to expose the service under (a DNS label; default: a random one)")
	fs.Bool(&rewriteHost, "rewrite-host", "send the local service its own host in the Host header, not the public one")
	fs.String(&logLevel, "log-level", "log `level`: debug, info, warn or error")
	fs.String(&logFormat, "log-format", "log `format`: text or json")
	rest, err := parseFlags(fs, env, args, exposeUsage)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("want exactly one LOCAL-URL")
	}
	log, err := config.NewLogger(env.Stderr, logLevel, logFormat)
	if err != nil {
		return usagef("%v", err)
	}
	if name == "" {
		name = randomName()
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	err = cl.Expose(ctx, client.ExposeOptions{
		Name:        name,
		Local:       rest[0],
		RewriteHost: rewriteHost,
		Logger:      log,
		OnReady: func(url string) {
			fmt.Fprintf(env.Stdout, "Forwarding %s -> %s\n", url, rest[0])
		},
	})
	if err == nil {
		log.Info("expose: stopped", slog.String("name", name))
	}
	return err
}

// randomName is a name of 10 letters and digits.
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
