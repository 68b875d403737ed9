package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/config"
)

// DefaultServer is the server the client verbs talk to unless told.
const DefaultServer = "http://127.0.0.1:8080"

// clientFlags are the flags every client verb shares.
type clientFlags struct {
	server  string
	token   string
	noRetry bool
}

func (c *clientFlags) register(fs *config.FlagSet) {
	c.server = DefaultServer
	fs.String(&c.server, "server", "`URL` of the postern server")
	fs.String(&c.token, "token", "bearer `token` to send (prefer the environment)", "TUNNEL_ACCESS_TOKEN")
	fs.Bool(&c.noRetry, "no-retry", "try each request once: no retries on 503, 429 or a failed connection (sends carry an Idempotency-Key either way)")
}

func (c *clientFlags) client() (*client.Client, error) {
	opts := []client.Option{client.WithToken(c.token)}
	if c.noRetry {
		opts = append(opts, client.WithoutRetry())
	}
	cl, err := client.New(c.server, opts...)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return cl, nil
}

const sendUsage = `Usage: postern send [flags] TUNNEL [DATA|-]

Sends DATA (or standard input, when DATA is - or absent) to TUNNEL and prints
the message id. With --wait-reply it then waits for the consumer's reply and
prints that instead.
`

func runSend(ctx context.Context, env Env, args []string) error {
	fs := config.NewFlagSet("send")
	var cf clientFlags
	cf.register(fs)
	var contentType string
	var limit int
	var noBackpressure bool
	var waitReply time.Duration
	fs.String(&contentType, "content-type", "Content-Type stored with the message (default: the server's)")
	fs.Int(&limit, "limit", "refuse the message when the tunnel already holds this many")
	fs.Bool(&noBackpressure, "no-backpressure", "accept the message even when the tunnel is full (the oldest are trimmed)")
	fs.Duration(&waitReply, "wait-reply", "after sending, wait this long for a reply and print it")
	rest, err := parseFlags(fs, env, args, sendUsage)
	if err != nil {
		return err
	}
	if len(rest) < 1 || len(rest) > 2 {
		return usagef("want TUNNEL and at most one DATA argument")
	}
	var body []byte
	if len(rest) == 1 || rest[1] == "-" {
		if body, err = io.ReadAll(env.Stdin); err != nil {
			return fmt.Errorf("reading standard input: %w", err)
		}
	} else {
		body = []byte(rest[1])
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	t := cl.Tunnel(rest[0])
	res, err := t.Send(ctx, body, client.SendOptions{ContentType: contentType, Limit: limit, NoBackpressure: noBackpressure})
	if err != nil {
		return err
	}
	if res.Trimmed > 0 {
		fmt.Fprintf(env.Stderr, "postern send: tunnel full: %d older message(s) dropped\n", res.Trimmed)
	}
	if waitReply <= 0 {
		fmt.Fprintln(env.Stdout, res.ID)
		return nil
	}
	deadline := time.Now().Add(waitReply)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return &exitError{code: ExitEmpty, msg: fmt.Sprintf("no reply to %s within %v", res.ID, waitReply)}
		}
		m, ok, err := t.ReadReply(ctx, res.ID, left)
		if err != nil {
			return err
		}
		if ok {
			return writeMessage(env.Stdout, m.Body)
		}
	}
}

const recvUsage = `Usage: postern recv [flags] TUNNEL

Receives the oldest message of TUNNEL and prints its body. It waits up to
--wait for one to arrive and exits 3 when none did. With --follow it keeps
receiving until interrupted, one message after another.

With --ack the message is received in pending mode and acknowledged only after
it was written out, so a crash in between redelivers it instead of losing it.
`

func runRecv(ctx context.Context, env Env, args []string) error {
	fs := config.NewFlagSet("recv")
	var cf clientFlags
	cf.register(fs)
	var follow, ack bool
	wait := 30 * time.Second
	fs.Bool(&follow, "follow", "keep receiving messages until interrupted")
	fs.Bool(&ack, "ack", "receive in pending mode and acknowledge each message after printing it")
	fs.Duration(&wait, "wait", "how long to wait for a message (0: do not wait)")
	rest, err := parseFlags(fs, env, args, recvUsage)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("want exactly one TUNNEL")
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	t := cl.Tunnel(rest[0])
	if follow && wait <= 0 {
		wait = 30 * time.Second
	}
	for {
		m, ok, err := t.Receive(ctx, client.ReceiveOptions{Pending: ack, Wait: wait})
		if err != nil {
			if follow && ctx.Err() != nil {
				return nil // interrupted
			}
			return err
		}
		if ok {
			if err := writeMessage(env.Stdout, m.Body); err != nil {
				return err
			}
			if ack {
				if err := t.Ack(context.WithoutCancel(ctx), m.ID); err != nil {
					return fmt.Errorf("acknowledging %s: %w", m.ID, err)
				}
			}
		}
		if !follow {
			if !ok {
				return &exitError{code: ExitEmpty, msg: "no message"}
			}
			return nil
		}
	}
}

// writeMessage writes body, followed by a newline unless it ends with one.
func writeMessage(w io.Writer, body []byte) error {
	if _, err := w.Write(body); err != nil {
		return err
	}
	if !bytes.HasSuffix(body, []byte("\n")) {
		if _, err := w.Write([]byte("\n")); err != nil {
			return err
		}
	}
	return nil
}
