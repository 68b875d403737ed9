// Package cli is postern's command line, built on cobra: `postern serve`
// runs a node, and the other verbs are clients and agents of a running node
// built on the public client package. cmd/postern only hands it the
// process's arguments, streams and environment (Env), so tests run it in
// process as well as as a binary.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/version"
)

// Env is what a command sees of its process. The context given to Main
// ends on SIGINT or SIGTERM: one-shot commands stop at once (exit 130),
// long-running ones stop cleanly (serve drains) and exit 0.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

// Exit codes, the same in every command.
const (
	ExitOK          = 0   // done; also a long-running command stopped by SIGINT or SIGTERM
	ExitError       = 1   // the server refused the request, or the command failed
	ExitUsage       = 2   // the command line (or a setting) was wrong
	ExitEmpty       = 3   // nothing arrived within the wait (recv, send --wait-reply)
	ExitUnavailable = 4   // postern could not be reached, is shutting down, or the answer was not postern's
	ExitDenied      = 5   // the server refused the credentials (401, 403)
	ExitInterrupted = 130 // interrupted (Ctrl-C) before a one-shot command finished
)

// exitCodesHelp documents the exit codes in the root command's help.
const exitCodesHelp = `Exit codes (every command):
  0    done (a long-running command stopped by Ctrl-C or SIGTERM included)
  1    the server refused the request, or the command failed
  2    the command line or a setting was wrong
  3    nothing arrived within the wait (recv, send --wait-reply)
  4    postern could not be reached, is shutting down, or the answer was not postern's
  5    the server refused the credentials: a token is missing or lacks a grant
  130  interrupted (Ctrl-C) before a one-shot command finished`

// exitError ends a command with a specific exit code and a one-line
// message (none when msg is empty).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError marks command-line mistakes (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// errInterrupted ends a one-shot command stopped by its context.
var errInterrupted = &exitError{code: ExitInterrupted, msg: "interrupted"}

// app is one run of the command line.
type app struct {
	env Env
}

// Main runs the command line args (without the program name) and returns the
// process exit code.
func Main(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	a := &app{env: env}
	root := a.root()
	root.SetArgs(args)
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	return a.report(cmd, err)
}

// report writes err as one line prefixed with the command's path and
// returns its exit code.
func (a *app) report(cmd *cobra.Command, err error) int {
	prefix := "postern"
	if cmd != nil {
		prefix = cmd.CommandPath()
	}
	var ue *usageError
	var ee *exitError
	switch {
	case errors.As(err, &ue):
		hint := prefix + " --help"
		fmt.Fprintf(a.env.Stderr, "%s: %s (see '%s')\n", prefix, oneLine(ue.msg), hint)
		return ExitUsage
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintf(a.env.Stderr, "%s: %s\n", prefix, oneLine(ee.msg))
		}
		return ee.code
	}
	fmt.Fprintf(a.env.Stderr, "%s: %s\n", prefix, oneLine(strings.TrimPrefix(err.Error(), "postern: ")))
	return ExitError
}

// Command groups of the root help.
const (
	groupServer = "server"
	groupTunnel = "tunnels"
	groupChan   = "channels"
	groupInbox  = "inbox"
	groupAgent  = "agents"
	groupTools  = "tools"
)

func (a *app) root() *cobra.Command {
	cobra.EnableCommandSorting = false // the groups list commands in a sensible order
	root := &cobra.Command{
		Use:   "postern",
		Short: "the back gate for services that cannot be reached directly",
		Long: `postern is the back gate for services that cannot be reached directly: one
server for tunnels (HTTP event queues with acks and replies), inboxes
(addressed JSON messages with idempotency keys and acks), channels
(websocket pub/sub), a reverse relay for backends behind NAT, and exposed
local services. The client verbs talk to a running server (--server,
default ` + DefaultServer + `; POSTERN_SERVER).`,
		Example: `  postern serve                               # a server on :8080, data in ./postern-data
  postern send demo 'hello'                   # queue a message on tunnel demo
  postern recv demo                           # and take it
  postern sub /news &  postern pub /news hi   # pub/sub
  postern expose --name web http://localhost:3000
  postern relay --name robot-1 http://localhost:3000`,
		Version:       versionString(),
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          subcommandArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SetOut(a.env.Stderr)
			cmd.Help()
			return &exitError{code: ExitUsage}
		},
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: false},
	}
	root.SetVersionTemplate("postern {{.Version}}\n")
	root.SetUsageTemplate(strings.TrimSuffix(root.UsageTemplate(), "\n") + "{{if not .HasParent}}\n\n" + exitCodesHelp + "{{end}}\n")
	root.SetFlagErrorFunc(flagError)
	root.AddGroup(
		&cobra.Group{ID: groupServer, Title: "Run a server:"},
		&cobra.Group{ID: groupTunnel, Title: "Tunnels (queues with pending, acks and replies):"},
		&cobra.Group{ID: groupChan, Title: "Channels (pub/sub):"},
		&cobra.Group{ID: groupInbox, Title: "Inbox (addressed messages):"},
		&cobra.Group{ID: groupAgent, Title: "Reach services behind NAT:"},
		&cobra.Group{ID: groupTools, Title: "Tools:"},
	)
	root.SetHelpCommandGroupID(groupTools)
	root.SetCompletionCommandGroupID(groupTools)
	root.AddCommand(
		a.serveCmd(),
		a.sendCmd(), a.recvCmd(), a.replyCmd(),
		a.pubCmd(), a.subCmd(),
		a.inboxCmd(),
		a.exposeCmd(), a.relayCmd(),
		a.tokenCmd(), a.versionCmd(),
	)
	return root
}

// subcommandArgs is the Args of a command with subcommands: an argument
// that names none of them is an "unknown command", with the nearest names.
func subcommandArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return unknownCommand(cmd, args[0])
	}
	return nil
}

// notef returns a function that writes a one-line note of cmd on standard
// error ("postern sub: reconnected").
func (a *app) notef(cmd *cobra.Command) func(format string, args ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(a.env.Stderr, cmd.CommandPath()+": "+format+"\n", args...)
	}
}

// unknownCommand is the error for a name that is no subcommand of cmd.
func unknownCommand(cmd *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q", name)
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return usagef("%s", msg)
}

// flagError turns a flag parsing error into a usage error, with the
// nearest flag name for an unknown one.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		if s := nearestFlag(cmd, name); s != "" {
			msg += fmt.Sprintf(" (did you mean --%s?)", s)
		}
	}
	// "-listen", as Go's flag package took it: long flags take two dashes.
	if _, word, ok := strings.Cut(msg, "' in -"); ok && strings.HasPrefix(msg, "unknown shorthand flag") {
		name, _, _ := strings.Cut(word, "=")
		if cmd.Flags().Lookup(name) != nil {
			msg = fmt.Sprintf("unknown flag -%s (long flags take two dashes: --%s)", word, name)
		}
	}
	return usagef("%s", msg)
}

func versionString() string {
	v := version.Version()
	if rev := version.Revision(); rev != "" {
		v += " (" + strings.TrimSpace(rev) + ")"
	}
	return v
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "print the version",
		GroupID: groupTools,
		Args:    noArgs,
		Example: "  postern version\n  postern --version",
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprintf(a.env.Stdout, "postern %s\n", versionString())
			return err
		},
	}
}

// noArgs refuses positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}
