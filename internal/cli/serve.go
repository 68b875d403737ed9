package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/node"
)

func (a *app) serveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "serve [flags]",
		Short:   "run a postern server",
		GroupID: groupServer,
		Long: `Runs a postern server: tunnels at /t/, inboxes at /inbox/, channels at /c/
(or at / with --channels-at-root), the relay at /client/ and /server/,
expose agents at /agent and /proxy/subscribe (users reach them by Host
NAME.<--expose-domain> or at /proxy/request/NAME/), the status page at /
(/_postern/ with --channels-at-root), health at /healthz and /readyz,
Prometheus metrics at /metrics. At start it prints the URL of each of them.

SIGTERM or SIGINT drains it gracefully: waiting long-polls are answered,
requests in progress finish, then it exits 0.`,
		Example: `  postern serve                                        # :8080, data in ./postern-data
  postern serve --listen 127.0.0.1:9000 --store memory
  postern serve --token-file tokens.toml --tls-cert cert.pem --tls-key key.pem
  postern serve --expose-domain gate.example --config /etc/postern/postern.toml
  postern serve --listen :443 --expose-domain gate.example \
      --acme-domain gate.example --acme-email ops@example.com   # automatic HTTPS
  POSTERN_STORE=redis://10.0.0.2:6379/0 postern serve   # one of many nodes`,
		Args: noArgs,
	}
	fs, cfg := config.ServeFlags()
	a.bind(cmd, fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		log, err := config.NewLogger(a.env.Stderr, cfg.LogLevel, cfg.LogFormat)
		if err != nil {
			return usagef("%v", err)
		}
		cfg.Server.Logger = log
		if strings.EqualFold(cfg.LogFormat, "text") {
			cfg.Server.Banner = a.env.Stderr
		}
		// Listen first: a port in use is one line, before anything opens.
		ln, err := net.Listen("tcp", cfg.Server.Listen)
		if err != nil {
			return listenError(cfg.Server.Listen, err)
		}
		srv, err := node.New(cfg.Server)
		if err != nil {
			ln.Close()
			return err
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()

		ctx := cmd.Context()
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
	return cmd
}

// listenError tells why the listen address could not be taken, and what
// to do.
func listenError(addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return &exitError{code: ExitError, msg: fmt.Sprintf("cannot listen on %s: the address is in use (another postern, or another program; choose another with --listen or POSTERN_LISTEN)", addr)}
	case errors.Is(err, syscall.EACCES):
		return &exitError{code: ExitError, msg: fmt.Sprintf("cannot listen on %s: permission denied (ports below 1024 need privileges; choose another with --listen or POSTERN_LISTEN)", addr)}
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return &exitError{code: ExitError, msg: fmt.Sprintf("cannot listen on %s: no such address on this machine (--listen or POSTERN_LISTEN)", addr)}
	}
	return &exitError{code: ExitUsage, msg: fmt.Sprintf("cannot listen on %q: %s (--listen or POSTERN_LISTEN)", addr, lastPart(err))}
}
