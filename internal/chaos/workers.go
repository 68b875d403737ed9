package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/postern/postern/client"
)

// callTimeout bounds one call with its retries.
const callTimeout = 20 * time.Second

// produce sends the tunnel's numbered messages, one at a time, each with
// an idempotency key of its own (the client's), until the load stops.
func (w *workload) produce(ctx context.Context, c *client.Client, tunnel string) {
	for seq := 0; !w.stopped(); seq++ {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		res, err := c.Tunnel(tunnel).Send(cctx, []byte(body(tunnel, seq)), client.SendOptions{ContentType: "text/plain"})
		cancel()
		w.led.produced(tunnel, seq, err == nil, res.ID)
	}
}

type consumeMode int

const (
	plain      consumeMode = iota // GET /t/ID
	longPoll                      // GET /t/ID/poll
	pendingAck                    // GET /t/ID?pending, then DELETE /t/ID/<id>
)

func (m consumeMode) String() string { return [...]string{"plain", "poll", "pending"}[m] }

// consume reads the tunnel as mode says until the load stops. A pending
// message read again before its ack went through is not a repeat.
func (w *workload) consume(ctx context.Context, c *client.Client, tunnel string, mode consumeMode) {
	who := fmt.Sprintf("%s %v", tunnel, mode)
	opts := client.ReceiveOptions{Pending: mode == pendingAck}
	if mode == longPoll {
		opts.Wait = time.Second
	}
	unacked := ""
	for !w.stopped() {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		if mode == pendingAck {
			cancel()
			cctx, cancel = w.abort(ctx)
		}
		m, ok, err := c.Tunnel(tunnel).Receive(cctx, opts)
		cancel()
		if err != nil || !ok {
			continue
		}
		if m.ID != unacked {
			w.led.received(tunnel, string(m.Body), m.ID, who)
		}
		if mode == pendingAck {
			unacked = m.ID
			actx, cancel := context.WithTimeout(ctx, callTimeout)
			if c.Tunnel(tunnel).Ack(actx, m.ID) == nil {
				unacked = ""
			}
			cancel()
		}
	}
}

// mail is the body of an inbox message.
type mail struct {
	Seq int `json:"seq"`
}

// sendMail sends numbered messages from one actor to another until the
// load stops; every third asks for an ack.
func (w *workload) sendMail(ctx context.Context, c *client.Client, from, to string) {
	for seq := 0; !w.stopped(); seq++ {
		key := fmt.Sprintf("%s-%08d", to, seq)
		b, _ := json.Marshal(mail{seq})
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		_, err := c.Inbox(from).Send(cctx, client.Envelope{IdempotencyKey: key, Destination: []string{to}, Body: b, ExpectsAck: seq%3 == 0})
		cancel()
		w.led.sentMail(to, key, err == nil)
	}
}

// receiveMail reads an actor's inbox until the load stops.
func (w *workload) receiveMail(ctx context.Context, c *client.Client, to string) {
	for !w.stopped() {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		got, _, err := c.Inbox(to).Receive(cctx)
		cancel()
		if err != nil {
			continue
		}
		for _, m := range got {
			if m.Message != nil {
				w.led.gotMail(to, m.Message.IdempotencyKey)
			}
		}
	}
}

// drain reads every tunnel and inbox of the round empty, with pending
// reads and acks on the first node, once the leases of deliveries that
// failed (or were still being settled when the load stopped) ran out.
func (w *workload) drain(ctx context.Context) error {
	sleep(ctx, w.opts.Lease+500*time.Millisecond)
	c := w.node(0)
	deadline := time.Now().Add(w.opts.Lease + 30*time.Second)
	for i := range w.opts.Tunnels {
		if err := w.drainTunnel(ctx, c, w.tunnel(i), deadline); err != nil {
			return err
		}
	}
	for i := range w.opts.Mailboxes {
		if err := w.drainInbox(ctx, c, w.mailbox(i), deadline); err != nil {
			return err
		}
	}
	return nil
}

func (w *workload) drainTunnel(ctx context.Context, c *client.Client, tunnel string, deadline time.Time) error {
	t := c.Tunnel(tunnel)
	for unacked := ""; ; {
		if time.Now().After(deadline) {
			n, err := t.Len(ctx)
			return fmt.Errorf("drain: tunnel %s still holds %d messages (%v)", tunnel, n, err)
		}
		m, ok, err := t.Receive(ctx, client.ReceiveOptions{Pending: true})
		switch {
		case err != nil:
			continue
		case ok:
			if m.ID != unacked {
				w.led.received(tunnel, string(m.Body), m.ID, "drain")
			}
			unacked = m.ID
			if t.Ack(ctx, m.ID) == nil {
				unacked = ""
			}
		default:
			if n, err := t.Len(ctx); err == nil && n == 0 {
				return nil
			}
		}
	}
}

func (w *workload) drainInbox(ctx context.Context, c *client.Client, to string, deadline time.Time) error {
	for {
		if time.Now().After(deadline) {
			return fmt.Errorf("drain: the inbox of %s does not empty", to)
		}
		got, _, err := c.Inbox(to).Receive(ctx)
		if err != nil {
			continue
		}
		if len(got) == 0 {
			return nil
		}
		for _, m := range got {
			if m.Message != nil {
				w.led.gotMail(to, m.Message.IdempotencyKey)
			}
		}
	}
}
