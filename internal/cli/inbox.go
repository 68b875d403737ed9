package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/config"
)

const inboxUsage = `Usage: postern inbox send --from A --to B,C [--ack] [--key K] [BODY|-]
       postern inbox receive --as A [--all]

Addressed JSON messages (the echoes inbox under /inbox).

send stores one copy of BODY for each actor of --to, as actor --from, and
prints {"idempotencyKey": K, "sent": N}. BODY is sent as JSON when it parses
as JSON (42, true, {"a":1}, "quoted"), otherwise as a JSON string (hello
becomes "hello"); --string always sends it as a string. Without BODY, or
with -, it is read from standard input (one trailing newline dropped).
Without --key a random url-safe key is used. Sending again with the same
key is safe: a copy not yet read is replaced, a read one is not delivered
again. With --ack each destination's receive leaves an ack for A.

receive prints, as one JSON array, the messages and acks waiting for --as,
and removes them. The server returns a limited number per receive; the rest
wait for the next one (postern says how many on standard error), or --all
keeps receiving until none are left.
`

func runInbox(ctx context.Context, env Env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(env.Stdout, inboxUsage)
		if len(args) == 0 {
			return usagef("want a subcommand: send or receive")
		}
		return nil
	}
	switch args[0] {
	case "send":
		return runInboxSend(ctx, env, args[1:])
	case "receive", "recv":
		return runInboxReceive(ctx, env, args[1:])
	}
	return usagef("unknown inbox subcommand %q: want send or receive", args[0])
}

func runInboxSend(ctx context.Context, env Env, args []string) error {
	fs := config.NewFlagSet("inbox send")
	var cf clientFlags
	cf.register(fs)
	var from, key string
	var to []string
	var ack, asString bool
	fs.String(&from, "from", "actor `name` to send as (the From header)")
	fs.List(&to, "to", "comma-separated destination actor `names`")
	fs.Bool(&ack, "ack", "ask every destination for an ack")
	fs.String(&key, "key", "idempotency `key` (12 to 64 of A-Z a-z 0-9 - _ =); default: a random one")
	fs.Bool(&asString, "string", "send BODY as a JSON string even when it parses as JSON")
	rest, err := parseFlags(fs, env, args, inboxUsage)
	if err != nil {
		return err
	}
	switch {
	case from == "":
		return usagef("--from is required")
	case len(to) == 0:
		return usagef("--to is required")
	case len(rest) > 1:
		return usagef("want at most one BODY argument")
	}
	var raw []byte
	if len(rest) == 0 || rest[0] == "-" {
		if raw, err = io.ReadAll(env.Stdin); err != nil {
			return fmt.Errorf("reading standard input: %w", err)
		}
		raw = bytes.TrimSuffix(raw, []byte("\n"))
		raw = bytes.TrimSuffix(raw, []byte("\r"))
	} else {
		raw = []byte(rest[0])
	}
	body, err := inboxBody(raw, asString)
	if err != nil {
		return err
	}
	if key == "" {
		key = client.NewIdempotencyKey()
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	n, err := cl.Inbox(from).Send(ctx, client.Envelope{IdempotencyKey: key, Destination: to, Body: body, ExpectsAck: ack})
	if err != nil {
		return err
	}
	out, _ := json.Marshal(struct {
		Key  string `json:"idempotencyKey"`
		Sent int    `json:"sent"`
	}{key, n})
	_, err = fmt.Fprintf(env.Stdout, "%s\n", out)
	return err
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
	b, err := json.Marshal(string(raw))
	if err != nil {
		return nil, err
	}
	return b, nil
}

func runInboxReceive(ctx context.Context, env Env, args []string) error {
	fs := config.NewFlagSet("inbox receive")
	var cf clientFlags
	cf.register(fs)
	var as string
	var all bool
	fs.String(&as, "as", "actor `name` whose messages to receive (the From header)")
	fs.Bool(&all, "all", "receive again until nothing is left, printing one array")
	rest, err := parseFlags(fs, env, args, inboxUsage)
	if err != nil {
		return err
	}
	if as == "" {
		return usagef("--as is required")
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	ib := cl.Inbox(as)
	mail := []client.Mail{}
	for {
		got, remaining, err := ib.Receive(ctx)
		if err != nil {
			if len(mail) > 0 {
				// Print what was already taken before failing: it is gone
				// from the server.
				printMail(env.Stdout, mail)
			}
			return err
		}
		mail = append(mail, got...)
		if remaining == 0 || len(got) == 0 {
			break
		}
		if !all {
			fmt.Fprintf(env.Stderr, "postern inbox receive: %d more waiting; receive again to get them\n", remaining)
			break
		}
	}
	return printMail(env.Stdout, mail)
}

func printMail(w io.Writer, mail []client.Mail) error {
	out, err := json.Marshal(mail)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", out)
	return err
}
