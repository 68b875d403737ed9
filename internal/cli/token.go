package cli

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/config"
)

func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "token",
		Short:   "make scoped tokens for the server's --token-file",
		GroupID: groupTools,
		Example: `  postern token new --name ci --grant write,read:/t/builds-* >> tokens.toml`,
		Args:    subcommandArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("want a subcommand: new")
		},
	}
	cmd.AddCommand(a.tokenNewCmd())
	return cmd
}

func (a *app) tokenNewCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "new --name NAME [--grant ACTIONS:PATH ...]",
		Short: "make a token: a new secret, and its [[token]] block for the token file",
		Long: `Makes a random secret for a new scoped token and prints the [[token]] block
to add to the server's --token-file (TOML) on standard output. The block
holds only the secret's SHA-256: the secret itself is shown once, on
standard error (or written to --secret-file), for the client to present
as --token or POSTERN_TOKEN ("Authorization: Bearer <secret>").

A grant is ACTIONS:PATH: one or more of read, write, serve, call, ops
(comma-separated, or * for all) on a path, exact or a prefix ending in *:
  /t/<tunnel>     read: consume, status, length, replies; write: produce, ack, reply, clear
  /inbox/<actor>  write: send as <actor>; read: receive <actor>'s messages
  /c/<path>       read: subscribe; write: publish
  /relay/<name>   serve: be relay backend <name>; call: send requests to it
  /expose/<name>  serve: claim agent name <name>; call: send requests to it
  /ops/status     ops: the status page (/ops/metrics, /ops/nodes: the others)
The server reads the token file at start: restart it after adding a token.`,
		Example: `  postern token new --name ci --grant write,read:/t/builds-* >> tokens.toml
  postern token new --name robot-1 --grant serve:/relay/robot-1 --grant serve:/expose/robot-1 --secret-file robot-1.secret
  postern token new --name ops --grant '*:/t/*'`,
		Args: noArgs,
	}
	fs := config.NewFlagSet("token new")
	var name, secretFile string
	var grants []string
	fs.String(&name, "name", "`name` of the token (unique in the file; it shows in logs, never the secret)")
	fs.String(&secretFile, "secret-file", "write the secret to this `file` (mode 0600) instead of standard error")
	a.bind(cmd, fs)
	// --grant repeats; each holds a comma-separated list of actions.
	cmd.Flags().StringArrayVar(&grants, "grant", nil, "a grant `ACTIONS:PATH` (repeatable), e.g. write,read:/t/builds-*")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if name == "" {
			return usagef("--name is required")
		}
		block, secret, err := newToken(name, grants)
		if err != nil {
			return usagef("%v", err)
		}
		if secretFile != "" {
			if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
				return fmt.Errorf("writing the secret: %w", err)
			}
		} else {
			fmt.Fprintf(a.env.Stderr, "secret of token %q (shown only now; the token file keeps its hash): %s\n", name, secret)
		}
		_, err = fmt.Fprint(a.env.Stdout, block)
		return err
	}
	return cmd
}

// newToken returns the token file block of a new token and its secret. The
// block is checked by the server's own token file parser.
func newToken(name string, grants []string) (block, secret string, err error) {
	var raw [32]byte
	rand.Read(raw[:])
	secret = "pst_" + base64.RawURLEncoding.EncodeToString(raw[:])
	sum := sha256.Sum256([]byte(secret))
	var b strings.Builder
	fmt.Fprintf(&b, "\n[[token]]\nname = %s\nsecret_sha256 = %q\n", strconv.Quote(name), hex.EncodeToString(sum[:]))
	for _, g := range grants {
		actions, path, ok := strings.Cut(g, ":")
		if !ok || actions == "" || path == "" {
			return "", "", fmt.Errorf("--grant %q: want ACTIONS:PATH, e.g. write:/t/jobs", g)
		}
		var quoted []string
		for _, act := range strings.Split(actions, ",") {
			if act = strings.TrimSpace(act); act != "" {
				quoted = append(quoted, strconv.Quote(act))
			}
		}
		fmt.Fprintf(&b, "[[token.grant]]\nactions = [%s]\npaths = [%s]\n", strings.Join(quoted, ", "), strconv.Quote(path))
	}
	if _, err := auth.Parse([]byte(b.String())); err != nil {
		return "", "", err
	}
	return b.String(), secret, nil
}
