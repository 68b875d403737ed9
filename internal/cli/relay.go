package cli

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
)

func (a *app) relayCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "relay --name NAME [flags] LOCAL-URL",
		Short:   "serve a local backend through a relay server (Cloud Robotics http-relay protocol)",
		GroupID: groupAgent,
		Long: `Serves the backend at LOCAL-URL through a relay server as the relay client
named NAME: users reach it at <server>/client/NAME/<path>, or on any path
with the header "X-Server-Name: NAME" (gRPC). It speaks the Cloud Robotics
http-relay protocol (long-polls /server/request, posts /server/response in
chunks), so it works against postern and against the original
http-relay-server alike, in place of the original http-relay-client.

Like "postern expose" it logs one line per request, reconnects with backoff
and jitter when the server goes away, and stops on SIGINT or SIGTERM after
the requests in progress. With a token policy on postern, the relay client
needs a token granted "serve" on /relay/NAME (sent as a bearer token on
every relay call, as the original's --authentication_token_file).`,
		Example: `  postern relay --name robot-1 http://127.0.0.1:3000
  curl http://127.0.0.1:8080/client/robot-1/api/status
  postern relay --server https://relay.example --name robot-1 --pending-requests 4 http://127.0.0.1:3000`,
		Args: exactArgs(1, "want exactly one LOCAL-URL"),
	}
	c := a.newAgentCmd(cmd)
	var name string
	pending := 2
	c.fs.String(&name, "name", "backend `name` to serve (the original's --server_name)")
	c.fs.Int(&pending, "pending-requests", "concurrent long-polls for requests (the original's --num_pending_requests)")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if name == "" {
			return usagef("--name is required: the backend name users reach it by")
		}
		if pending < 1 {
			return usagef("--pending-requests must be at least 1")
		}
		if err := localURL(args[0]); err != nil {
			return err
		}
		log, err := c.logger()
		if err != nil {
			return err
		}
		server := c.cf.serverURL()
		if _, err := url.Parse(server); err != nil {
			return usagef("--server: %v", err)
		}
		public := server + "/client/" + url.PathEscape(name) + "/"
		rc, err := gcrclient.New(gcrclient.Options{
			RelayURL:           server,
			ServerName:         name,
			BackendURL:         args[0],
			Token:              c.cf.token,
			NumPendingRequests: pending,
			Logger:             log,
			Backoff:            func() gcrclient.Backoff { return newBackoff() },
			OnReady: func() {
				fmt.Fprintf(a.env.Stdout, "Forwarding %s -> %s\n", public, args[0])
			},
		})
		if err != nil {
			return usagef("%v", err)
		}
		ctx := cmd.Context()
		err = rc.Run(ctx)
		if errors.Is(err, gcrclient.ErrForbidden) {
			why := c.call("serve", "/relay/"+name)
			if why.token {
				return &exitError{code: ExitDenied, msg: fmt.Sprintf("403: the token given is not granted \"serve\" on /relay/%s (check --token or POSTERN_TOKEN, and the server's --token-file)", name)}
			}
			return &exitError{code: ExitDenied, msg: fmt.Sprintf("403: serving %q needs a token granted \"serve\" on /relay/%s (--token or POSTERN_TOKEN)", name, name)}
		}
		if err != nil {
			return explain(ctx, err, c.call("serve", "/relay/"+name))
		}
		log.Info("relay: stopped", "name", name)
		return nil
	}
	return cmd
}
