package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/config"
)

// clientCmd is the part every client verb shares: its flags and the client
// they make.
type clientCmd struct {
	a  *app
	fs *config.FlagSet
	cf clientFlags
}

func (a *app) newClientCmd(cmd *cobra.Command) *clientCmd {
	c := &clientCmd{a: a, fs: config.NewFlagSet(cmd.Name())}
	c.cf.register(c.fs)
	return c
}

// followRetries are the client options of a command that follows (when
// follow): its own loop retries for as long as it runs and says when it
// lost and found the server, so the client's retries are off.
func followRetries(follow bool) []client.Option {
	if follow {
		return []client.Option{client.WithoutRetry()}
	}
	return nil
}

// client returns the client of --server with --token.
func (c *clientCmd) client(opts ...client.Option) (*client.Client, error) {
	base := []client.Option{client.WithToken(c.cf.token)}
	if c.cf.noRetry {
		base = append(base, client.WithoutRetry())
	}
	cl, err := client.New(c.cf.serverURL(), append(base, opts...)...)
	if err != nil {
		return nil, usagef("--server: %v", err)
	}
	return cl, nil
}

// call describes a call needing action on path, for its errors.
func (c *clientCmd) call(action, path string) call {
	return call{server: c.cf.serverURL(), token: c.cf.token != "", action: action, path: path}
}

// bodyArg is DATA from the arguments, or standard input when it is absent
// or "-".
func (c *clientCmd) bodyArg(ctx context.Context, cmd *cobra.Command, args []string, i int, what string) ([]byte, error) {
	if len(args) > i && args[i] != "-" {
		return []byte(args[i]), nil
	}
	return c.a.readInput(ctx, cmd.CommandPath(), what)
}

// tunnelPath is the token policy's path of a tunnel.
func tunnelPath(id string) string { return "/t/" + id }

func (a *app) sendCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "send [flags] TUNNEL [DATA|-]",
		Short:   "send a message to a tunnel",
		GroupID: groupTunnel,
		Long: `Sends DATA (or standard input, when DATA is - or absent) to TUNNEL and prints
the message id. With --wait-reply it then waits for the consumer's reply
(postern reply) and prints that instead; no reply in time exits 3.

A tunnel id is 1 to 1024 characters of A-Z a-z 0-9 - _.`,
		Example: `  postern send demo 'hello'
  echo '{"n":1}' | postern send --content-type application/json demo
  postern send --wait-reply 10s rpc 'ping'     # prints the reply
  postern send --server 10.0.0.5:8080 jobs - < job.json`,
		Args: rangeArgs(1, 2, "want TUNNEL and at most one DATA argument"),
	}
	c := a.newClientCmd(cmd)
	var contentType string
	var limit int
	var noBackpressure bool
	var waitReply time.Duration
	c.fs.String(&contentType, "content-type", "Content-Type stored with the message (default: the server's)")
	c.fs.Int(&limit, "limit", "refuse the message when the tunnel already holds this many")
	c.fs.Bool(&noBackpressure, "no-backpressure", "accept the message even when the tunnel is full (the oldest are trimmed)")
	c.fs.Duration(&waitReply, "wait-reply", "after sending, wait this long for a reply and print it")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		body, err := c.bodyArg(ctx, cmd, args, 1, "message")
		if err != nil {
			return err
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		t := cl.Tunnel(args[0])
		why := c.call("write", tunnelPath(args[0]))
		res, err := t.Send(ctx, body, client.SendOptions{ContentType: contentType, Limit: limit, NoBackpressure: noBackpressure})
		if err != nil {
			return explain(ctx, err, why)
		}
		if res.Trimmed > 0 {
			fmt.Fprintf(a.env.Stderr, "%s: tunnel full: %d older message(s) dropped\n", cmd.CommandPath(), res.Trimmed)
		}
		if waitReply <= 0 {
			_, err := fmt.Fprintln(a.env.Stdout, res.ID)
			return err
		}
		m, err := waitForReply(ctx, t, res.ID, waitReply)
		if err != nil {
			return explain(ctx, err, c.call("read", tunnelPath(args[0])))
		}
		if m == nil {
			return &exitError{code: ExitEmpty, msg: fmt.Sprintf("no reply to %s within %v", res.ID, waitReply)}
		}
		return output{w: a.env.Stdout}.print(message{Body: m.Body})
	}
	return cmd
}

// waitForReply long-polls for the reply to id for up to wait, through
// server restarts; nil when none came.
func waitForReply(ctx context.Context, t *client.Tunnel, id string, wait time.Duration) (*client.Message, error) {
	deadline := time.Now().Add(wait)
	bo := newBackoff()
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		m, ok, err := t.ReadReply(ctx, id, left)
		switch {
		case ok:
			return &m, nil
		case transient(err):
			if d := bo.Next(); time.Until(deadline) < d || !sleep(ctx, d) {
				return nil, err
			}
		case err != nil:
			return nil, err
		}
	}
}

func (a *app) recvCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "recv [flags] TUNNEL",
		Short:   "receive messages from a tunnel",
		GroupID: groupTunnel,
		Long: `Receives the oldest message of TUNNEL and prints its body. It waits up to
--wait for one to arrive and exits 3 when none did. With --follow it keeps
receiving until interrupted, reconnecting by itself when the server goes
away (a restart) and coming back.

With --ack the message is received in pending mode and acknowledged only
after it was written out: a crash in between redelivers it instead of losing
it, and a message redelivered after a reconnection is not printed twice.
With --pending it is left pending for "postern reply" (or another consumer's
ack); --ids or --json show its id.

Output: one line per message; a message that holds newlines is framed (its
lines starting with "." get another ".", and a line holding only "." ends
it). --json prints JSON lines: {"id", "content_type", "body"} with
"body_base64" instead of "body" for bytes that are not UTF-8.`,
		Example: `  postern recv demo                          # waits up to 30 s, exits 3 if nothing came
  postern recv --follow --ack jobs           # a worker: print and acknowledge each job
  postern recv --pending --ids rpc           # 1764627000000-0<TAB>ping; then: postern reply rpc 1764627000000-0 pong
  postern recv --follow --json events | jq .body`,
		Args: exactArgs(1, "want exactly one TUNNEL"),
	}
	c := a.newClientCmd(cmd)
	var follow, ack, pending, ids, asJSON bool
	wait := 30 * time.Second
	c.fs.Bool(&follow, "follow", "keep receiving messages until interrupted, reconnecting when the server goes away")
	c.fs.Bool(&ack, "ack", "receive in pending mode and acknowledge each message after printing it")
	c.fs.Bool(&pending, "pending", "receive in pending mode and leave the message pending (reply or ack it later)")
	c.fs.Duration(&wait, "wait", "how long to wait for a message (0: do not wait)")
	c.fs.Bool(&ids, "ids", "print each message's id and a tab before it")
	c.fs.Bool(&asJSON, "json", "print JSON lines: id, content_type, body (or body_base64)")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if ack && pending {
			return usagef("--ack and --pending exclude each other: --ack acknowledges, --pending leaves the message for a reply")
		}
		cl, err := c.client(followRetries(follow)...)
		if err != nil {
			return err
		}
		r := &receiver{
			t: cl.Tunnel(args[0]), out: output{w: a.env.Stdout, json: asJSON, ids: ids},
			pending: ack || pending, ack: ack, wait: wait, why: c.call("read", tunnelPath(args[0])),
			log: a.notef(cmd),
		}
		if follow {
			return r.follow(cmd.Context())
		}
		return r.once(cmd.Context())
	}
	return cmd
}

// receiver runs recv.
type receiver struct {
	t       *client.Tunnel
	out     output
	pending bool
	ack     bool
	wait    time.Duration
	why     call
	log     func(format string, args ...any)

	// unacked is the id of a message printed whose ack did not go through:
	// when it comes again (it is still pending), it is acknowledged without
	// being printed twice.
	unacked string
}

// once receives one message, waiting up to wait in all: a server that
// restarts meanwhile is waited for, and its shutdown is not taken for an
// empty queue.
func (r *receiver) once(ctx context.Context) error {
	deadline := time.Now().Add(r.wait)
	bo := newBackoff()
	for {
		left := max(time.Until(deadline), 0)
		if r.wait > 0 && left == 0 {
			return &exitError{code: ExitEmpty, msg: "no message"}
		}
		asked := time.Now()
		m, ok, err := r.t.Receive(ctx, client.ReceiveOptions{Pending: r.pending, Wait: left})
		switch {
		case err == nil && !ok:
			if r.wait > 0 && time.Since(asked) >= time.Second && time.Until(deadline) > time.Second {
				continue // the server capped the wait below ours: wait on
			}
			return &exitError{code: ExitEmpty, msg: "no message"}
		case err == nil:
			return r.handle(ctx, m)
		case ctx.Err() != nil:
			return errInterrupted
		case transient(err) && r.wait > 0:
			if d := bo.Next(); time.Until(deadline) < d || !sleep(ctx, d) {
				return explain(ctx, err, r.why)
			}
		default:
			return explain(ctx, err, r.why)
		}
	}
}

// follow receives until ctx ends, reconnecting with backoff.
func (r *receiver) follow(ctx context.Context) error {
	wait := r.wait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	bo := newBackoff()
	lost := false
	for {
		m, ok, err := r.t.Receive(ctx, client.ReceiveOptions{Pending: r.pending, Wait: wait})
		if ctx.Err() != nil {
			return nil // interrupted: a normal stop
		}
		if err != nil {
			if !transient(err) {
				return explain(ctx, err, r.why)
			}
			d := bo.Next()
			if !lost {
				r.log("%s; reconnecting (next try in %v)", oneLine(explain(ctx, err, r.why).Error()), d.Round(time.Millisecond))
				lost = true
			}
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}
		if lost {
			r.log("reconnected")
			lost = false
		}
		bo.Reset()
		if ok {
			if err := r.handle(ctx, m); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
	}
}

// ackGrace bounds one acknowledgement of a printed message, which an
// interrupt does not cut short.
const ackGrace = 5 * time.Second

// handle prints m and, with --ack, acknowledges it, retrying the ack
// through a server restart: a message is never skipped, nor printed twice.
func (r *receiver) handle(ctx context.Context, m client.Message) error {
	if m.ID != r.unacked || m.ID == "" {
		if err := r.out.print(message{ID: m.ID, ContentType: m.ContentType, Body: m.Body}); err != nil {
			return err
		}
	}
	if !r.ack {
		return nil
	}
	r.unacked = m.ID
	bo := newBackoff()
	for {
		// The message is printed: an interrupt now (Ctrl-C right after the
		// line appeared) lets this ack finish, within ackGrace, rather than
		// leave a message the user saw to come back later.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackGrace)
		err := r.t.Ack(actx, m.ID)
		cancel()
		if err == nil {
			r.unacked = ""
			return nil
		}
		if ctx.Err() != nil {
			return errInterrupted
		}
		if !transient(err) {
			return explain(ctx, fmt.Errorf("acknowledging %s: %w", m.ID, err), r.why)
		}
		if !sleep(ctx, bo.Next()) {
			return errInterrupted
		}
	}
}

func (a *app) replyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "reply [flags] TUNNEL ID [DATA|-]",
		Short:   "reply to a message received in pending mode (acknowledges it)",
		GroupID: groupTunnel,
		Long: `Replies DATA (or standard input, when DATA is - or absent) to message ID of
TUNNEL, which must be pending: received with "postern recv --pending" (or
?pending) and not yet acknowledged. The reply acknowledges the message, and
its producer gets the reply ("postern send --wait-reply").`,
		Example: `  postern send --wait-reply 30s rpc 'ping' &    # the producer waits
  postern recv --pending --ids rpc               # 1764627000000-0<TAB>ping
  postern reply rpc 1764627000000-0 'pong'       # the producer prints pong`,
		Args: rangeArgs(2, 3, "want TUNNEL, ID and at most one DATA argument"),
	}
	c := a.newClientCmd(cmd)
	var contentType string
	c.fs.String(&contentType, "content-type", "Content-Type of the reply")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		body, err := c.bodyArg(ctx, cmd, args, 2, "reply")
		if err != nil {
			return err
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		err = cl.Tunnel(args[0]).Reply(ctx, args[1], body, contentType)
		if errors.Is(err, client.ErrNotPending) {
			return &exitError{code: ExitError, msg: fmt.Sprintf("message %s of tunnel %s is not pending: it was acknowledged already, never received with --pending, or is unknown", args[1], args[0])}
		}
		return explain(ctx, err, c.call("write", tunnelPath(args[0])))
	}
	return cmd
}

// exactArgs wants n positional arguments.
func exactArgs(n int, msg string) cobra.PositionalArgs { return rangeArgs(n, n, msg) }

// rangeArgs wants lo to hi positional arguments.
func rangeArgs(lo, hi int, msg string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return usagef("%s", msg)
		}
		return nil
	}
}
