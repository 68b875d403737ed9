package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/postern/postern/internal/config"
)

// bind gives cmd the flags of fs. Before the command runs, every flag not on
// the command line is taken from its environment variables and then from
// the config file (when fs has one): flags > environment > file > default.
// Each flag's help names its variables.
func (a *app) bind(cmd *cobra.Command, fs *config.FlagSet) {
	cmd.Flags().SortFlags = false // in the order defined: related flags together
	for _, name := range fs.Names() {
		cmd.Flags().AddGoFlag(fs.Lookup(name))
		if envs := fs.EnvNames(name); len(envs) > 0 {
			cmd.Flags().Lookup(name).Usage += " [env " + strings.Join(envs, ", ") + "]"
		}
	}
	next := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if err := fs.Resolve(a.env.Getenv, c.Flags().Changed); err != nil {
			return usagef("%v", err)
		}
		if next != nil {
			return next(c, args)
		}
		return nil
	}
	if titles, of := fs.Groups(); len(titles) > 0 {
		cmd.SetUsageFunc(func(c *cobra.Command) error { return groupedUsage(c, titles, of) })
	}
}

// groupedUsage writes the usage of a command with many flags, its flags
// listed by section.
func groupedUsage(c *cobra.Command, titles []string, of func(string) string) error {
	w := c.OutOrStderr()
	fmt.Fprintf(w, "Usage:\n  %s\n", c.UseLine())
	if c.HasExample() {
		fmt.Fprintf(w, "\nExamples:\n%s\n", c.Example)
	}
	for _, title := range append(titles, "Other") {
		set := pflag.NewFlagSet(title, pflag.ContinueOnError)
		set.SortFlags = false
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if g := of(f.Name); g == title || (g == "" && title == "Other") {
				set.AddFlag(f)
			}
		})
		if set.HasFlags() {
			fmt.Fprintf(w, "\n%s:\n%s", title, set.FlagUsagesWrapped(100))
		}
	}
	fmt.Fprint(w, "\nEvery setting is a flag, an environment variable (shown) or a key of the --config file\n(TOML, one key per flag name); flags win over the environment, the environment over the file.\n")
	return nil
}

// nearestFlag is the flag of cmd whose name is closest to name, within an
// edit distance of 2 (or that name starts), or "".
func nearestFlag(cmd *cobra.Command, name string) string {
	name, _, _ = strings.Cut(name, "=")
	best, bestD := "", 3
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		d := editDistance(name, f.Name)
		if strings.HasPrefix(f.Name, name) && len(name) >= 3 {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = f.Name, d
		}
	})
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

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
	fs.String(&c.server, "server", "`URL` of the postern server (host:port means http://host:port)")
	fs.String(&c.token, "token", "bearer `token` to send (prefer the environment: flags show in ps)", "TUNNEL_ACCESS_TOKEN")
	fs.Bool(&c.noRetry, "no-retry", "try each request once: no retries on 503, 429 or a failed connection (sends carry an Idempotency-Key either way)")
}

// serverURL is --server with a scheme: "host:port" means
// "http://host:port".
func (c *clientFlags) serverURL() string {
	s := strings.TrimSpace(c.server)
	if s != "" && !strings.Contains(s, "://") {
		s = "http://" + s
	}
	return strings.TrimSuffix(s, "/")
}
