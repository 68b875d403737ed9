package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/client"
)

// channelCmd is a client verb on a channel: --channels-prefix besides the
// client flags.
type channelCmd struct {
	*clientCmd
	prefix string
}

func (a *app) newChannelCmd(cmd *cobra.Command) *channelCmd {
	c := &channelCmd{clientCmd: a.newClientCmd(cmd), prefix: client.DefaultChannelsPrefix}
	c.fs.String(&c.prefix, "channels-prefix", "`path` where the server mounts channels (empty for a server run with --channels-at-root)")
	return c
}

func (c *channelCmd) channel(path string) (*client.Channel, call, error) {
	cl, err := c.client(client.WithChannelsPrefix(c.prefix))
	if err != nil {
		return nil, call{}, err
	}
	ch := cl.Channel(path)
	return ch, c.call("", "/c"+ch.Path()), nil
}

func (a *app) pubCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "pub [flags] PATH [MSG|-]",
		Short:   "publish a message to a channel",
		GroupID: groupChan,
		Long: `Publishes MSG (or standard input, when MSG is - or absent) to the channel
PATH: every subscriber of the channel receives it, and the channel's history
keeps it for subscribers that come later with --since. An empty message
reaches nobody.`,
		Example: `  postern pub /news 'hello'
  echo hello | postern pub /news
  postern pub --channels-prefix '' /news hi     # a server run with --channels-at-root`,
		Args: rangeArgs(1, 2, "want PATH and at most one MSG argument"),
	}
	c := a.newChannelCmd(cmd)
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		msg, err := c.bodyArg(ctx, cmd, args, 1, "message")
		if err != nil {
			return err
		}
		ch, why, err := c.channel(args[0])
		if err != nil {
			return err
		}
		why.action = "write"
		return explain(ctx, ch.Publish(ctx, msg), why)
	}
	return cmd
}

func (a *app) subCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "sub [flags] PATH",
		Short:   "print the messages of a channel as they come",
		GroupID: groupChan,
		Long: `Subscribes to the channel PATH and prints each message until interrupted (or
until --count messages arrived). When the server goes away (a restart) it
reconnects by itself and resumes after the last message it printed, so
nothing kept in the channel's history is missed or printed twice; when the
history no longer reaches back that far it says so on standard error.

With --since it first prints what the history holds after that message id
(0: all of it). --ids prefixes each message with its id and a tab, for
--since later. Output is framed like recv's; --json prints JSON lines.`,
		Example: `  postern sub /news
  postern sub --ids --since 0 /news          # the kept history first
  postern sub --json /sensors | jq -r .body
  postern sub --count 1 /jobs/done           # wait for one message`,
		Args: exactArgs(1, "want exactly one PATH"),
	}
	c := a.newChannelCmd(cmd)
	var since string
	var ids, asJSON bool
	var count int
	c.fs.String(&since, "since", "resume after this message `id` (0: the whole history)")
	c.fs.Bool(&ids, "ids", "print each message's id and a tab before it")
	c.fs.Bool(&asJSON, "json", "print JSON lines: id, content_type, body (or body_base64)")
	c.fs.Int(&count, "count", "exit after this many messages (0: never)")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ch, why, err := c.channel(args[0])
		if err != nil {
			return err
		}
		why.action = "read"
		s := &subscriber{ch: ch, since: since, count: count, why: why,
			out: output{w: a.env.Stdout, json: asJSON, ids: ids},
			log: a.notef(cmd)}
		return s.run(cmd.Context())
	}
	return cmd
}

// subscriber runs sub.
type subscriber struct {
	ch    *client.Channel
	since string
	count int
	out   output
	why   call
	log   func(format string, args ...any)
	n     int
}

func (s *subscriber) run(ctx context.Context) error {
	bo := newBackoff()
	lost := false
	for {
		err := s.session(ctx, func() {
			if lost {
				s.log("reconnected")
				lost = false
			}
			bo.Reset()
		})
		if ctx.Err() != nil || err == nil {
			return nil
		}
		if !transient(err) {
			return explain(ctx, err, s.why)
		}
		d := bo.Next()
		if !lost {
			s.log("%s; reconnecting (next try in %v)", reason(ctx, err, s.why), d.Round(time.Millisecond))
			lost = true
		}
		if !sleep(ctx, d) {
			return nil
		}
	}
}

// reason tells why a subscription ended, for the reconnect line.
func reason(ctx context.Context, err error, why call) string {
	var closed *client.ClosedError
	if errors.As(err, &closed) {
		text := map[int]string{1001: "the server is shutting down", 1008: "this subscriber fell behind"}[closed.Code]
		if text == "" {
			text = strings.TrimSpace(fmt.Sprintf("%d %s", closed.Code, closed.Reason))
		}
		return "the server ended the subscription: " + text
	}
	return explain(ctx, err, why).Error()
}

// session is one subscription: nil when --count was reached.
func (s *subscriber) session(ctx context.Context, connected func()) error {
	sub, err := s.ch.Subscribe(ctx, client.SubscribeOptions{Since: s.since})
	if err != nil {
		return err
	}
	defer sub.Close()
	connected()
	for m := range sub.Messages() {
		if m.Gap {
			s.log("the history does not reach back to the last message seen: messages may have been missed")
			continue
		}
		if m.ID != "" {
			s.since = m.ID // a reconnection resumes after it
		}
		ct := "text/plain; charset=utf-8"
		if m.Binary {
			ct = "application/octet-stream"
		}
		if err := s.out.print(message{ID: m.ID, ContentType: ct, Body: m.Data, Binary: m.Binary}); err != nil {
			return err
		}
		if s.n++; s.count > 0 && s.n >= s.count {
			return nil
		}
	}
	err = sub.Err()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	if err == nil {
		err = errors.New("subscription ended")
	}
	return err
}
