package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/client"
)

func (a *app) inboxCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "inbox",
		Short:   "send and receive addressed messages (the echoes inbox)",
		GroupID: groupInbox,
		Long: `Addressed JSON messages (the echoes inbox under /inbox): an actor sends a
message to several others with an idempotency key, each destination receives
it once, and the sender gets an ack when asked.

  postern inbox send --from A --to B,C [--ack] [--key K] [BODY|-]
  postern inbox receive --as A [--all | --follow]`,
		Example: `  postern inbox send --from olivia --to maurice,george --ack 'Hey there, are you ok?'
  postern inbox receive --as george`,
		Args: subcommandArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("want a subcommand: send or receive")
		},
	}
	cmd.AddCommand(a.inboxSendCmd(), a.inboxReceiveCmd())
	return cmd
}

func inboxPath(actor string) string { return "/inbox/" + actor }

func (a *app) inboxSendCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "send --from A --to B,C [flags] [BODY|-]",
		Short: "send a message to one or more actors",
		Long: `Stores one copy of BODY for each actor of --to, as actor --from, and prints
{"idempotencyKey": K, "sent": N}. BODY is sent as JSON when it parses as
JSON (42, true, {"a":1}, "quoted"), otherwise as a JSON string (hello
becomes "hello"); --string always sends it as a string. Without BODY, or
with -, it is read from standard input (one trailing newline dropped).

Without --key a random url-safe key is used. Sending again with the same
key is safe: a copy not yet read is replaced, a read one is not delivered
again. With --ack each destination's receive leaves an ack for --from.`,
		Example: `  postern inbox send --from olivia --to maurice,george --ack 'Hey there, are you ok?'
  postern inbox send --from maurice --to olivia --key 222222222222 '{"lorem": "ipsum"}'
  echo 42 | postern inbox send --from a --to b`,
		Args: rangeArgs(0, 1, "want at most one BODY argument"),
	}
	c := a.newClientCmd(cmd)
	var from, key string
	var to []string
	var ack, asString bool
	c.fs.String(&from, "from", "actor `name` to send as (the From header)")
	c.fs.List(&to, "to", "comma-separated destination actor `names`")
	c.fs.Bool(&ack, "ack", "ask every destination for an ack")
	c.fs.String(&key, "key", "idempotency `key` (12 to 64 of A-Z a-z 0-9 - _ =); default: a random one")
	c.fs.Bool(&asString, "string", "send BODY as a JSON string even when it parses as JSON")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		switch {
		case from == "":
			return usagef("--from is required")
		case len(to) == 0:
			return usagef("--to is required")
		}
		ctx := cmd.Context()
		raw, err := c.bodyArg(ctx, cmd, args, 0, "message body")
		if err != nil {
			return err
		}
		if len(args) == 0 || args[0] == "-" {
			raw = bytes.TrimSuffix(raw, []byte("\n"))
			raw = bytes.TrimSuffix(raw, []byte("\r"))
		}
		body, err := inboxBody(raw, asString)
		if err != nil {
			return err
		}
		if key == "" {
			key = client.NewIdempotencyKey()
		}
		cl, err := c.client()
		if err != nil {
			return err
		}
		n, err := cl.Inbox(from).Send(ctx, client.Envelope{IdempotencyKey: key, Destination: to, Body: body, ExpectsAck: ack})
		if err != nil {
			return explain(ctx, err, c.call("write", inboxPath(from)))
		}
		out, _ := json.Marshal(struct {
			Key  string `json:"idempotencyKey"`
			Sent int    `json:"sent"`
		}{key, n})
		_, err = fmt.Fprintf(a.env.Stdout, "%s\n", out)
		return err
	}
	return cmd
}

// inboxBody is BODY as JSON: itself when it is JSON (and asString is not
// set), otherwise a JSON string holding it.
func inboxBody(raw []byte, asString bool) (json.RawMessage, error) {
	if !asString && json.Valid(raw) {
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err == nil {
			return buf.Bytes(), nil
		}
	}
	return json.Marshal(string(raw))
}

// DefaultInboxInterval is how often "inbox receive --follow" asks for new
// messages: the inbox protocol has no long-poll.
const DefaultInboxInterval = time.Second

func (a *app) inboxReceiveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "receive --as A [flags]",
		Aliases: []string{"recv"},
		Short:   "receive (and remove) the messages and acks waiting for an actor",
		Long: `Prints, as one JSON array, the messages and acks waiting for --as, and
removes them from the server. The server returns a limited number per
receive; the rest wait for the next one (postern says how many on standard
error), or --all keeps receiving until none are left.

--json prints one entry per line (JSON lines) instead of an array.
--follow keeps receiving until interrupted, every --interval, printing JSON
lines, and reconnects by itself when the server goes away.`,
		Example: `  postern inbox receive --as george
  postern inbox receive --as george --all --json
  postern inbox receive --as george --follow | jq -c 'select(.type == "msg") | .body'`,
		Args: noArgs,
	}
	c := a.newClientCmd(cmd)
	var as string
	var all, follow, asJSON bool
	interval := DefaultInboxInterval
	c.fs.String(&as, "as", "actor `name` whose messages to receive (the From header)")
	c.fs.Bool(&all, "all", "receive again until nothing is left")
	c.fs.Bool(&follow, "follow", "keep receiving until interrupted (JSON lines), reconnecting when the server goes away")
	c.fs.Duration(&interval, "interval", "with --follow, how often to ask for new messages")
	c.fs.Bool(&asJSON, "json", "print one JSON entry per line instead of an array")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if as == "" {
			return usagef("--as is required")
		}
		if interval <= 0 {
			return usagef("--interval must be positive")
		}
		cl, err := c.client(followRetries(follow)...)
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		ib := cl.Inbox(as)
		why := c.call("read", inboxPath(as))
		if follow {
			return followInbox(ctx, ib, interval, a.env.Stdout, why, a.notef(cmd))
		}
		mail := []client.Mail{}
		for {
			got, remaining, err := ib.Receive(ctx)
			if err != nil {
				if len(mail) > 0 {
					// What was taken is gone from the server: print it.
					printMail(a.env.Stdout, mail, asJSON)
				}
				return explain(ctx, err, why)
			}
			mail = append(mail, got...)
			if remaining == 0 || len(got) == 0 {
				break
			}
			if !all {
				fmt.Fprintf(a.env.Stderr, "%s: %d more waiting; receive again to get them\n", cmd.CommandPath(), remaining)
				break
			}
		}
		return printMail(a.env.Stdout, mail, asJSON)
	}
	return cmd
}

// followInbox receives every interval (at once again while more wait)
// until ctx ends, printing JSON lines.
func followInbox(ctx context.Context, ib *client.Inbox, interval time.Duration, w io.Writer, why call, log func(string, ...any)) error {
	bo := newBackoff()
	lost := false
	for {
		got, remaining, err := ib.Receive(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := interval
		switch {
		case err != nil && !transient(err):
			return explain(ctx, err, why)
		case err != nil:
			wait = bo.Next()
			if !lost {
				log("%s; reconnecting (next try in %v)", explain(ctx, err, why).Error(), wait.Round(time.Millisecond))
				lost = true
			}
		default:
			if lost {
				log("reconnected")
				lost = false
			}
			bo.Reset()
			if err := printMail(w, got, true); err != nil {
				return err
			}
			if remaining > 0 {
				wait = 0
			}
		}
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// printMail writes mail as one JSON array, or as JSON lines.
func printMail(w io.Writer, mail []client.Mail, lines bool) error {
	if !lines {
		out, err := json.Marshal(mail)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", out)
		return err
	}
	var buf bytes.Buffer
	for _, m := range mail {
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	_, err := w.Write(buf.Bytes())
	return err
}
