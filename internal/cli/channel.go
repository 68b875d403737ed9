package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/postern/postern/client"
	"github.com/postern/postern/internal/config"
)

// channelFlags are the flags of pub and sub.
type channelFlags struct {
	clientFlags
	prefix string
}

func (c *channelFlags) register(fs *config.FlagSet) {
	c.clientFlags.register(fs)
	c.prefix = client.DefaultChannelsPrefix
	fs.String(&c.prefix, "channels-prefix", "`path` where the server mounts channels (empty for a server run with --channels-at-root)")
}

func (c *channelFlags) channel(path string) (*client.Channel, error) {
	cl, err := client.New(c.server, client.WithToken(c.token), client.WithChannelsPrefix(c.prefix))
	if err != nil {
		return nil, usagef("%v", err)
	}
	return cl.Channel(path), nil
}

const pubUsage = `Usage: postern pub [flags] PATH [MSG|-]

Publishes MSG (or standard input, when MSG is - or absent) to the channel
PATH: every subscriber of the channel receives it. An empty message reaches
nobody.
`

func runPub(ctx context.Context, env Env, args []string) error {
	fs := config.NewFlagSet("pub")
	var cf channelFlags
	cf.register(fs)
	rest, err := parseFlags(fs, env, args, pubUsage)
	if err != nil {
		return err
	}
	if len(rest) < 1 || len(rest) > 2 {
		return usagef("want PATH and at most one MSG argument")
	}
	var msg []byte
	if len(rest) == 1 || rest[1] == "-" {
		if msg, err = io.ReadAll(env.Stdin); err != nil {
			return fmt.Errorf("reading standard input: %w", err)
		}
	} else {
		msg = []byte(rest[1])
	}
	ch, err := cf.channel(rest[0])
	if err != nil {
		return err
	}
	return ch.Publish(ctx, msg)
}

const subUsage = `Usage: postern sub [flags] PATH

Subscribes to the channel PATH and prints each message on its own line
until interrupted (or until --count messages arrived). With --since it
first prints what the server's history holds after that message id; when
the history no longer reaches back that far it says so on standard error.
--ids prefixes each line with the message id and a tab, for --since later.
`

func runSub(ctx context.Context, env Env, args []string) error {
	fs := config.NewFlagSet("sub")
	var cf channelFlags
	cf.register(fs)
	var since string
	var ids bool
	var count int
	fs.String(&since, "since", "resume after this message `id` (0: the whole history)")
	fs.Bool(&ids, "ids", "print each message's id and a tab before it")
	fs.Int(&count, "count", "exit after this many messages (0: never)")
	rest, err := parseFlags(fs, env, args, subUsage)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("want exactly one PATH")
	}
	ch, err := cf.channel(rest[0])
	if err != nil {
		return err
	}
	sub, err := ch.Subscribe(ctx, client.SubscribeOptions{Since: since})
	if err != nil {
		return err
	}
	defer sub.Close()
	n := 0
	for m := range sub.Messages() {
		if m.Gap {
			fmt.Fprintln(env.Stderr, "postern sub: the history does not reach back to the cursor: messages may have been missed")
			continue
		}
		if ids {
			if _, err := fmt.Fprintf(env.Stdout, "%s\t", m.ID); err != nil {
				return err
			}
		}
		data := m.Data
		if m.Binary {
			data = []byte(fmt.Sprintf("[binary message, %d bytes]", len(m.Data)))
		}
		if err := writeMessage(env.Stdout, data); err != nil {
			return err
		}
		if n++; count > 0 && n >= count {
			return nil
		}
	}
	if err := sub.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
