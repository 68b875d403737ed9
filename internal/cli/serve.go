package cli

import (
	"context"
	"errors"
	"net"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/node"
)

const serveUsage = `Usage: postern serve [flags]

Runs a postern server: tunnels at /t/, inboxes at /inbox/, channels at /c/
(or at / with --channels-at-root), the relay at /client/ and /server/,
expose agents at /agent and /proxy/subscribe (users reach them by Host
NAME.<--expose-domain> or at /proxy/request/NAME/), the status page at /
(/_postern/ with --channels-at-root), health at /healthz and /readyz,
Prometheus metrics at /metrics. SIGTERM or SIGINT drains it gracefully:
waiting long-polls are answered, requests in progress finish, then it
exits 0.
`

func runServe(ctx context.Context, env Env, args []string) error {
	fs, cfg := config.ServeFlags()
	rest, err := parseFlags(fs, env, args, serveUsage)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	log, err := config.NewLogger(env.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return usagef("%v", err)
	}
	cfg.Server.Logger = log
	srv, err := node.New(cfg.Server)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		srv.Shutdown(context.Background())
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		// The listener failed on its own.
		srv.Shutdown(context.Background())
		return err
	case <-ctx.Done():
		log.Info("shutting down", "cause", context.Cause(ctx).Error())
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(drainCtx)
	if serr := <-served; serr != nil {
		err = errors.Join(err, serr)
	}
	return err
}
