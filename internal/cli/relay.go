package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"runtime/debug"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/config"
	gcrclient "github.com/postern/postern/internal/relay/gcr/client"
)

// Settings of postern relay's process.
const (
	// logBatchDelay is how late a log line may reach standard error.
	logBatchDelay = 50 * time.Millisecond
	// relayGCPercent is the relay client's GOGC unless the environment
	// sets one.
	relayGCPercent = 400
)

func (a *app) relayCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "relay --name NAME [flags] LOCAL-URL",
		Short:   "serve a local backend through a relay server (Cloud Robotics http-relay protocol)",
		GroupID: groupAgent,
		Long: `Serves the backend at LOCAL-URL through a relay server as the relay client
named NAME: users reach it at <server>/client/NAME/<path>, or on any path
with the header "X-Server-Name: NAME" (gRPC). It speaks the Cloud Robotics
http-relay protocol (long-polls /server/request, posts /server/response in
chunks), so it works against postern and against the original
http-relay-server alike, in place of the original http-relay-client.

It is built for speed on that protocol: the long-polls follow the load (a
few wait when idle, one per request in progress under load, up to
--max-pending-requests), connections to the server and the backend are
kept and reused, and a streamed response goes in chunks of up to 1 MiB,
each posted as soon as the previous one is answered, straight from the
buffer it was read into. Against postern, which relays a posted body to
the user as it arrives, a response of known length goes in one message,
sent as it is read from the backend; and under load one poll answer
brings several requests, and the short responses of several requests go
back in one post (--batch-requests), so the relay's own HTTP exchanges
are shared between requests.

Like "postern expose" it logs one line per request, reconnects with backoff
and jitter when the server goes away, and stops on SIGINT or SIGTERM after
the requests in progress. With a token policy on postern, the relay client
needs a token granted "serve" on /relay/NAME (sent as a bearer token on
every relay call, as the original's --authentication_token_file).`,
		Example: `  postern relay --name robot-1 http://127.0.0.1:3000
  curl http://127.0.0.1:8080/client/robot-1/api/status
  postern relay --server https://relay.example --name robot-1 --pending-requests 4 http://127.0.0.1:3000
  postern relay --name robot-1 --log-level warn http://127.0.0.1:3000   # no line per request`,
		Args: exactArgs(1, "want exactly one LOCAL-URL"),
	}
	c := a.newAgentCmd(cmd)
	f := relayFlags{
		pending: gcrclient.TunedNumPendingRequests, maxPending: gcrclient.TunedMaxPendingRequests,
		chunk: gcrclient.TunedMaxChunkSize, block: gcrclient.TunedBlockSize,
		batch: gcrclient.TunedBatchRequests,
	}
	c.fs.String(&f.name, "name", "backend `name` to serve (the original's --server_name)")
	c.fs.Int(&f.pending, "pending-requests", "long-polls kept waiting for requests when idle (the original's --num_pending_requests)")
	c.fs.Int(&f.chunk, "max-chunk-size", "largest chunk of a streamed response posted at once, in bytes (the original's --max_chunk_size)")
	c.fs.Int(&f.block, "block-size", "size of each read from the backend, in bytes (the original's --block_size)")
	c.fs.Int(&f.maxPending, "max-pending-requests", "most long-polls waiting at once while requests are in progress (the polls follow the load up to it; equal to --pending-requests: a fixed number, as the original)")
	c.fs.Int(&f.batch, "batch-requests", "most requests taken from the server in one poll answer, with their short responses posted together, when the server offers it (postern does; 1: one request per poll, as the original)")
	a.bind(cmd, c.fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return a.runRelay(cmd, c, &f, args[0]) }
	return cmd
}

// relayFlags are postern relay's own flags.
type relayFlags struct {
	name                                     string
	pending, maxPending, chunk, block, batch int
}

func (f *relayFlags) check() error {
	switch {
	case f.name == "":
		return usagef("--name is required: the backend name users reach it by")
	case f.pending < 1:
		return usagef("--pending-requests must be at least 1")
	case f.maxPending < f.pending:
		return usagef("--max-pending-requests (%d) must be at least --pending-requests (%d)", f.maxPending, f.pending)
	case f.chunk < 1 || f.block < 1:
		return usagef("--max-chunk-size and --block-size must be positive")
	case f.batch < 1:
		return usagef("--batch-requests must be at least 1")
	}
	return nil
}

// runRelay runs the relay client for the backend at local until the
// command's context ends.
func (a *app) runRelay(cmd *cobra.Command, c *agentCmd, f *relayFlags, local string) error {
	if err := f.check(); err != nil {
		return err
	}
	if err := localURL(local); err != nil {
		return err
	}
	// The line per request goes out in batches (batchWriter): under
	// load a write per line costs the agent more than the line.
	logw := newBatchWriter(a.env.Stderr, logBatchDelay)
	defer logw.Flush()
	log, err := config.NewLogger(logw, c.logLevel, c.logFormat)
	if err != nil {
		return usagef("%v", err)
	}
	if a.env.Getenv("GOGC") == "" {
		// A relay client's heap is small and its garbage is per
		// request: collecting it four times less often saves CPU
		// for a few MB more.
		debug.SetGCPercent(relayGCPercent)
	}
	server := c.cf.serverURL()
	if _, err := url.Parse(server); err != nil {
		return usagef("--server: %v", err)
	}
	name := f.name
	public := server + "/client/" + url.PathEscape(name) + "/"
	rc, err := gcrclient.New(gcrclient.Tuned(gcrclient.Options{
		RelayURL:           server,
		ServerName:         name,
		BackendURL:         local,
		Token:              c.cf.token,
		NumPendingRequests: f.pending,
		MaxPendingRequests: f.maxPending,
		MaxChunkSize:       f.chunk,
		BlockSize:          f.block,
		BatchRequests:      f.batch,
		Logger:             log,
		Backoff:            func() gcrclient.Backoff { return newBackoff() },
		OnReady: func() {
			fmt.Fprintf(a.env.Stdout, "Forwarding %s -> %s\n", public, local)
		},
	}))
	if err != nil {
		return usagef("%v", err)
	}
	ctx := cmd.Context()
	err = rc.Run(ctx)
	if errors.Is(err, gcrclient.ErrForbidden) {
		why := c.call("serve", "/relay/"+name)
		if why.token {
			return &exitError{code: ExitDenied, msg: fmt.Sprintf("403: the token given is not granted \"serve\" on /relay/%s (check --token or POSTERN_TOKEN, and the server's --token-file)", name)}
		}
		return &exitError{code: ExitDenied, msg: fmt.Sprintf("403: serving %q needs a token granted \"serve\" on /relay/%s (--token or POSTERN_TOKEN)", name, name)}
	}
	if err != nil {
		return explain(ctx, err, c.call("serve", "/relay/"+name))
	}
	log.Info("relay: stopped", "name", name)
	return nil
}

// batchWriter writes what it gets to w in batches: a line waits at most
// delay (or until 32 KiB wait), and a line of level WARN or above goes at
// once with what waits before it. Flush writes what waits.
type batchWriter struct {
	w     io.Writer
	delay time.Duration

	mu    sync.Mutex
	buf   []byte
	timer *time.Timer // armed while something waits
	armed bool
}

func newBatchWriter(w io.Writer, delay time.Duration) *batchWriter {
	return &batchWriter{w: w, delay: delay}
}

func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) >= 32<<10 || urgent(p) {
		return len(p), b.flushLocked()
	}
	if !b.armed {
		b.armed = true
		if b.timer == nil {
			b.timer = time.AfterFunc(b.delay, func() { b.Flush() })
		} else {
			b.timer.Reset(b.delay)
		}
	}
	return len(p), nil
}

// urgentMarks mark log lines of level WARN and above, text or JSON.
var urgentMarks = [][]byte{[]byte("level=WARN"), []byte("level=ERROR"), []byte(`"level":"WARN"`), []byte(`"level":"ERROR"`)}

func urgent(line []byte) bool {
	for _, m := range urgentMarks {
		if bytes.Contains(line, m) {
			return true
		}
	}
	return false
}

// Flush writes what waits.
func (b *batchWriter) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *batchWriter) flushLocked() error {
	if b.armed {
		b.timer.Stop()
		b.armed = false
	}
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}
