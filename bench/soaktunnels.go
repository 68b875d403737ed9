package main

// The soak's tunnels: paced numbered producers and consumers of every
// kind, each message checked for loss, duplication and order.

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/client"
)

// soakTunnel is one tunnel, its producer's and its consumer's records.
type soakTunnel struct {
	id, kind string

	mu          sync.Mutex
	created     map[int]bool // seq answered 201
	got         map[int]int  // seq -> deliveries
	outstanding int          // created and not yet delivered
	last        int          // last seq delivered, -1 before the first
	redelivered int          // pending: the same message again (allowed)
	duplicated  int          // plain: a message delivered twice
	misordered  int
	replies     int
	producerOff atomic.Bool
}

func (t *soakTunnel) body(seq int) []byte {
	b := fmt.Appendf(nil, "soak %s %d ", t.id, seq)
	for len(b) < soakTunnelBody {
		b = append(b, 'x')
	}
	return b
}

func (t *soakTunnel) sent(seq int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.created[seq] = true
	if t.got[seq] == 0 {
		t.outstanding++
	}
}

// delivered records one delivery and reports a problem, if any.
func (t *soakTunnel) delivered(body []byte) (int, error) {
	f := strings.Fields(string(body))
	if len(f) != 4 || f[0] != "soak" || f[1] != t.id {
		return -1, fmt.Errorf("tunnel %s: unexpected body %.60q", t.id, body)
	}
	seq, err := strconv.Atoi(f[2])
	if err != nil || !bytes.Equal(body, t.body(seq)) {
		return -1, fmt.Errorf("tunnel %s: damaged body %.60q", t.id, body)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.got[seq]++
	switch {
	case t.got[seq] == 1:
		if t.created[seq] {
			t.outstanding--
		}
		if seq < t.last {
			t.misordered++
			return seq, fmt.Errorf("tunnel %s: message %d after %d", t.id, seq, t.last)
		}
		t.last = seq
	case t.kind != "plain" && t.kind != "poll" && seq == t.last:
		t.redelivered++ // pending: handed out again until acknowledged
	default:
		t.duplicated++
		return seq, fmt.Errorf("tunnel %s: message %d delivered %d times", t.id, seq, t.got[seq])
	}
	return seq, nil
}

// done says whether the consumer may stop: the producer stopped and
// everything it was answered 201 for arrived.
func (t *soakTunnel) done() bool {
	if !t.producerOff.Load() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.outstanding == 0
}

func (t *soakTunnel) counts() (created, delivered, lost int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for seq := range t.created {
		if t.got[seq] == 0 {
			lost++
		}
	}
	for _, n := range t.got {
		delivered += n
	}
	return len(t.created), delivered, lost
}

func (r *soakRun) startTunnels(wg *sync.WaitGroup) []*soakTunnel {
	var out []*soakTunnel
	for i, kind := range soakTunnelKinds {
		t := &soakTunnel{id: fmt.Sprintf("soak-%d-%s", i, kind), kind: kind, created: map[int]bool{}, got: map[int]int{}, last: -1}
		out = append(out, t)
		tun := r.cl.Tunnel(t.id)
		// Consumers stop once the producer did and everything arrived, or
		// soakDrain after the load stopped.
		cctx, ccancel := context.WithCancel(r.hardCtx)
		stopAfterDrain := context.AfterFunc(r.runCtx, func() { time.AfterFunc(soakDrain, ccancel) })
		wg.Go(func() {
			defer t.producerOff.Store(true)
			paced(r.runCtx, soakTunnelRate, func(seq int) {
				ctx, cancel := r.reqCtx()
				defer cancel()
				res, err := tun.Send(ctx, t.body(seq), client.SendOptions{ContentType: "text/plain"})
				if err != nil {
					r.errs.add("tunnels", "send %s %d: %v", t.id, seq, err)
					return
				}
				t.sent(seq)
				if kind != "reply" {
					return
				}
				m, ok, err := tun.ReadReply(ctx, res.ID, 10*time.Second)
				switch {
				case err != nil:
					r.errs.add("tunnels", "read reply %s %d: %v", t.id, seq, err)
				case !ok:
					r.errs.add("tunnels", "no reply to %s %d within 10s", t.id, seq)
				case !bytes.Equal(m.Body, append([]byte("re:"), t.body(seq)...)):
					r.errs.add("tunnels", "wrong reply to %s %d: %.40q", t.id, seq, m.Body)
				default:
					t.mu.Lock()
					t.replies++
					t.mu.Unlock()
				}
			})
		})
		wg.Go(func() {
			defer ccancel()
			defer stopAfterDrain()
			r.tunnelConsumer(cctx, tun, t)
			if !t.done() {
				r.errs.add("tunnels", "%s: consumer gave up %v after the load stopped", t.id, soakDrain)
			}
		})
	}
	return out
}

func (r *soakRun) tunnelConsumer(ctx context.Context, tun *client.Tunnel, t *soakTunnel) {
	opts := client.ReceiveOptions{}
	switch t.kind {
	case "pending", "reply":
		opts = client.ReceiveOptions{Pending: true, Wait: 5 * time.Second}
	case "poll":
		opts.Wait = 5 * time.Second
	}
	idle := time.NewTicker(50 * time.Millisecond) // the plain consumer's pace on an empty tunnel
	defer idle.Stop()
	for ctx.Err() == nil && !t.done() {
		rctx, cancel := context.WithTimeout(ctx, soakReqTimeout)
		m, ok, err := tun.Receive(rctx, opts)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.errs.add("tunnels", "receive %s: %v", t.id, err)
			continue
		}
		if !ok {
			if t.kind == "plain" {
				select {
				case <-idle.C:
				case <-ctx.Done():
				}
			}
			continue
		}
		seq, err := t.delivered(m.Body)
		if err != nil {
			r.errs.add("tunnels", "%v", err)
		}
		if !opts.Pending {
			continue
		}
		actx, cancel := r.reqCtx()
		if t.kind == "reply" {
			err = tun.Reply(actx, m.ID, append([]byte("re:"), t.body(seq)...), "text/plain")
		} else {
			err = tun.Ack(actx, m.ID)
		}
		cancel()
		if err != nil {
			r.errs.add("tunnels", "ack %s %s: %v", t.id, m.ID, err)
		}
	}
}
