// Package chaos puts postern's delivery guarantees through failures: a
// mixed load (produces with idempotency keys; plain consumes, long-polls,
// pending reads with acks; inbox sends and receives) runs against live
// nodes while a fault strikes (Redis paused or killed, a node killed,
// consumers going away in the middle of their answers); then every queue
// is drained and what the clients were told is checked against what they
// got (Report): nothing acknowledged lost, nothing invented, nothing
// stored twice, ids in each producer's order, and how many messages came
// twice (the at-least-once of a delivery whose settling a failure cut
// off).
//
// The tests in this package run a few rounds per engine on every CI run;
// bench/chaos.go runs at least fifty.
package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/postern/postern/client"
)

// Defaults of Options.
const (
	DefaultTunnels   = 3
	DefaultMailboxes = 2
	DefaultLoad      = 400 * time.Millisecond
)

// Options configures a round.
type Options struct {
	// Nodes are the base URLs of the nodes under load; clients are spread
	// over them.
	Nodes []string
	// Tunnels and Mailboxes are how many tunnels and inbox pairs are
	// under load; zero means the defaults.
	Tunnels, Mailboxes int
	// Lease is the nodes' delivery lease (--delivery-lease): the drain
	// waits past it for the leases of failed deliveries to run out.
	Lease time.Duration
	// Abort makes the pending consumers give up some requests in the
	// middle (a plain consume given up after its answer left the node is
	// delivered for the node: only an acknowledgement tells it more).
	Abort bool
	// Load is how long the load runs before the fault and again after
	// it; zero means DefaultLoad.
	Load time.Duration
}

func (o Options) withDefaults() Options {
	if o.Tunnels == 0 {
		o.Tunnels = DefaultTunnels
	}
	if o.Mailboxes == 0 {
		o.Mailboxes = DefaultMailboxes
	}
	if o.Load == 0 {
		o.Load = DefaultLoad
	}
	return o
}

// Round runs one round: load, then fault (nil: none) while the load goes
// on, load again, then a drain of every queue and the check. Names of the
// round's tunnels and inboxes start with name, so rounds never share a
// queue. An error means the round could not run (not a violation, which
// the Report counts).
func Round(ctx context.Context, name string, opts Options, fault func() error) (Report, error) {
	opts = opts.withDefaults()
	w := newWorkload(name, opts)
	w.start(ctx)
	var ferr error
	if sleep(ctx, opts.Load); fault != nil {
		ferr = fault()
	}
	sleep(ctx, opts.Load)
	w.stop()
	if ferr != nil {
		return Report{}, fmt.Errorf("fault: %w", ferr)
	}
	if err := w.drain(ctx); err != nil {
		return Report{}, err
	}
	return w.led.check(), nil
}

// sleep waits d, or until ctx ends: the load runs meanwhile.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// workload is one round's clients.
type workload struct {
	name    string
	opts    Options
	led     *ledger
	clients []*client.Client // one per node
	hc      *http.Client
	quit    chan struct{}
	wg      sync.WaitGroup
}

// retry is the clients' retry policy: enough tries to outlast a node's
// restart or a Redis paused for a few seconds.
var retry = client.RetryPolicy{Attempts: 10, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second}

func newWorkload(name string, opts Options) *workload {
	w := &workload{name: name, opts: opts, led: newLedger(), quit: make(chan struct{})}
	w.hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, u := range opts.Nodes {
		c, err := client.New(u, client.WithHTTPClient(w.hc), client.WithRetry(retry))
		if err != nil {
			panic(err) // the URLs are the harness's own
		}
		w.clients = append(w.clients, c)
	}
	return w
}

func (w *workload) node(i int) *client.Client { return w.clients[i%len(w.clients)] }

func (w *workload) tunnel(i int) string  { return fmt.Sprintf("%s-t%d", w.name, i) }
func (w *workload) sender(i int) string  { return fmt.Sprintf("%s-from%d", w.name, i) }
func (w *workload) mailbox(i int) string { return fmt.Sprintf("%s-to%d", w.name, i) }

// start runs, per tunnel, a producer and a plain, a long-polling and a
// pending consumer, and per inbox pair a sender and a receiver; each on a
// node of its own where there are several.
func (w *workload) start(ctx context.Context) {
	for i := range w.opts.Tunnels {
		t := w.tunnel(i)
		w.run(func() { w.produce(ctx, w.node(i), t) })
		for j, mode := range []consumeMode{plain, longPoll, pendingAck} {
			w.run(func() { w.consume(ctx, w.node(i+j+1), t, mode) })
		}
	}
	for i := range w.opts.Mailboxes {
		w.run(func() { w.sendMail(ctx, w.node(i), w.sender(i), w.mailbox(i)) })
		w.run(func() { w.receiveMail(ctx, w.node(i+1), w.mailbox(i)) })
	}
}

func (w *workload) run(fn func()) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		fn()
	}()
}

// stop ends the load and waits for every worker to finish its request.
func (w *workload) stop() {
	close(w.quit)
	w.wg.Wait()
}

func (w *workload) stopped() bool {
	select {
	case <-w.quit:
		return true
	default:
		return false
	}
}

// abort returns a context that, for some requests when Options.Abort is
// set, ends at a random moment within the first 20 ms.
func (w *workload) abort(ctx context.Context) (context.Context, context.CancelFunc) {
	if !w.opts.Abort || rand.IntN(4) > 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, time.Duration(rand.IntN(20_000))*time.Microsecond)
}
