// Package cli is postern's command line: `postern serve` runs a node, and
// the other verbs are clients of a running node built on the public client
// package. cmd/postern only hands it the process's arguments and streams.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/postern/postern/internal/version"
)

// Env is what a command sees of its process. The context given to Main
// ends on SIGINT or SIGTERM: long-running commands stop (serve drains) then.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1 // the command failed
	ExitUsage = 2 // the command line was wrong
	ExitEmpty = 3 // recv: nothing arrived in time
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env Env, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "run a postern server", runServe},
		{"send", "send a message to a tunnel", runSend},
		{"recv", "receive messages from a tunnel", runRecv},
		{"pub", "publish a message to a channel", runPub},
		{"sub", "print the messages of a channel", runSub},
		{"inbox", "send and receive addressed inbox messages", runInbox},
		{"expose", "publish a local service through the server", runExpose},
		{"version", "print the version", runVersion},
	}
}

// usageError marks command-line mistakes (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitError carries a specific exit code with an optional message.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// Main runs the command line args (without the program name) and returns the
// process exit code.
func Main(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			return Main(ctx, []string{args[1], "--help"}, env)
		}
		printUsage(env.Stdout)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	if args[0] == "--version" || args[0] == "-version" {
		args[0] = "version"
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, env, args[1:])
		var ue *usageError
		var ee *exitError
		switch {
		case err == nil:
			return ExitOK
		case errors.Is(err, flag.ErrHelp):
			return ExitOK
		case errors.As(err, &ue):
			fmt.Fprintf(env.Stderr, "postern %s: %s\nRun 'postern %s --help' for usage.\n", c.name, ue.msg, c.name)
			return ExitUsage
		case errors.As(err, &ee):
			if ee.msg != "" {
				fmt.Fprintf(env.Stderr, "postern %s: %s\n", c.name, ee.msg)
			}
			return ee.code
		}
		fmt.Fprintf(env.Stderr, "postern %s: %v\n", c.name, err)
		return ExitError
	}
	fmt.Fprintf(env.Stderr, "postern: unknown command %q\nRun 'postern help' for the list of commands.\n", args[0])
	return ExitUsage
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `postern is the back gate for services that cannot be reached directly:
tunnels (HTTP event queues with acks and replies), inboxes (addressed JSON
messages with idempotency keys and acks) and channels (websocket pub/sub)
behind one server.

Usage:
  postern <command> [flags] [arguments]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Every flag can also be set by an environment variable: --tunnel-max-len is
POSTERN_TUNNEL_MAX_LEN. Run 'postern <command> --help' for a command's flags.
`)
}

// parseFlags parses a command's flags, printing help on --help. Flags and
// positional arguments may be interleaved.
func parseFlags(fs interface {
	Parse(args []string, getenv func(string) string) error
	Args() []string
	PrintDefaults(io.Writer)
}, env Env, args []string, usage string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args, env.Getenv); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(env.Stdout, usage)
				fmt.Fprintln(env.Stdout, "\nFlags:")
				fs.PrintDefaults(env.Stdout)
				return nil, flag.ErrHelp
			}
			return nil, usagef("%v", err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if rest[0] == "--" {
			return append(positional, rest[1:]...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func runVersion(ctx context.Context, env Env, args []string) error {
	if len(args) > 0 {
		return usagef("version takes no arguments")
	}
	v := version.Version()
	if rev := version.Revision(); rev != "" {
		v += " (" + strings.TrimSpace(rev) + ")"
	}
	fmt.Fprintf(env.Stdout, "postern %s\n", v)
	return nil
}
