package main

// The soak's channels: paced publishers numbering their messages, and
// websocket subscribers that come and go, fresh or resuming.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/postern/postern/client"
)

// soakPublisher numbers the messages of one channel.
type soakPublisher struct {
	idx     int
	ch      *client.Channel
	started atomic.Int64 // publishes started: seq of the next one
	done    atomic.Int64 // every seq below has been answered (or failed)
	failed  sync.Map     // seq -> true: the publish failed
	ok      atomic.Int64
}

// soakChanStats is what the subscribers saw.
type soakChanStats struct {
	subscriptions, delivered, gaps, lost, duplicated, misordered, dropped atomic.Int64
}

// lostBetween counts the seqs in [from, to) that were published
// successfully.
func (p *soakPublisher) lostBetween(from, to int64) int64 {
	var n int64
	for s := from; s < to; s++ {
		if _, f := p.failed.Load(s); !f {
			n++
		}
	}
	return n
}

func (r *soakRun) startChannels(wg *sync.WaitGroup) *soakChanStats {
	st := &soakChanStats{}
	for c := range soakChannels {
		p := &soakPublisher{idx: c, ch: r.cl.Channel(fmt.Sprintf("/soak/%d", c))}
		// The last channel's publisher publishes through its own
		// websocket, the others by POST.
		publish := p.ch.Publish
		var ws *soakWSPublisher
		if c == soakChannels-1 {
			ws = &soakWSPublisher{url: "ws" + strings.TrimPrefix(r.base, "http") + client.DefaultChannelsPrefix + p.ch.Path()}
			publish = ws.publish
		}
		wg.Go(func() {
			if ws != nil {
				defer ws.close()
			}
			paced(r.runCtx, soakChannelRate, func(int) {
				seq := p.started.Add(1) - 1
				defer p.done.Store(seq + 1)
				ctx, cancel := r.reqCtx()
				defer cancel()
				if err := publish(ctx, fmt.Appendf(nil, "c%d-%d", c, seq)); err != nil {
					p.failed.Store(seq, true)
					r.errs.add("channels", "publish %s %d: %v", p.ch.Path(), seq, err)
					return
				}
				p.ok.Add(1)
			})
		})
		for s := range soakSubscribers {
			// Subscriber 0 of each channel resumes after the last id it
			// saw when it comes back; the others start fresh.
			resume := s == 0
			rng := rand.New(rand.NewPCG(uint64(c), uint64(s)))
			wg.Go(func() { r.subscriber(p, resume, rng, st) })
		}
	}
	return st
}

// soakWSPublisher publishes on a channel through a websocket of its own,
// as pinghub's clients do. The server sends every message to every
// subscriber, the sender included: a publish is done when its own message
// comes back.
type soakWSPublisher struct {
	url  string
	conn *websocket.Conn
}

func (p *soakWSPublisher) publish(ctx context.Context, msg []byte) error {
	if p.conn == nil {
		conn, _, err := websocket.Dial(ctx, p.url, nil)
		if err != nil {
			return err
		}
		p.conn = conn
	}
	err := p.conn.Write(ctx, websocket.MessageText, msg)
	if err == nil {
		var typ websocket.MessageType
		var echo []byte
		typ, echo, err = p.conn.Read(ctx)
		if err == nil && (typ != websocket.MessageText || !bytes.Equal(echo, msg)) {
			err = fmt.Errorf("own message came back as %.40q", echo)
		}
	}
	if err != nil {
		p.close()
	}
	return err
}

func (p *soakWSPublisher) close() {
	if p.conn != nil {
		p.conn.Close(websocket.StatusNormalClosure, "")
		p.conn = nil
	}
}

// subscriber subscribes, reads for a while, closes, and again, until the
// load stops, checking what it got against what p published.
func (r *soakRun) subscriber(p *soakPublisher, resume bool, rng *rand.Rand, st *soakChanStats) {
	prefix := fmt.Sprintf("c%d-", p.idx)
	lastSeq, lastID := int64(-1), ""
	for r.runCtx.Err() == nil {
		opts := client.SubscribeOptions{}
		resuming := resume && lastID != ""
		if resuming {
			opts.Since = lastID
		} else {
			lastSeq = -1
		}
		// The subscription lives as long as its context: the harness's.
		sub, err := p.ch.Subscribe(r.hardCtx, opts)
		if err != nil {
			r.errs.add("channels", "subscribe %s: %v", p.ch.Path(), err)
			select {
			case <-r.runCtx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		st.subscriptions.Add(1)
		// Every message whose publish starts from now on must arrive.
		from := p.started.Load()
		first := true
		afterGap := false
		handle := func(m client.ChannelMessage) {
			if m.Gap {
				st.gaps.Add(1)
				afterGap = true
				return
			}
			seq, err := strconv.ParseInt(strings.TrimPrefix(string(m.Data), prefix), 10, 64)
			if err != nil || !strings.HasPrefix(string(m.Data), prefix) {
				r.errs.add("channels", "%s: unexpected message %.40q", p.ch.Path(), m.Data)
				return
			}
			st.delivered.Add(1)
			switch {
			case seq <= lastSeq:
				st.duplicated.Add(1)
				r.errs.add("channels", "%s: message %d after %d", p.ch.Path(), seq, lastSeq)
				return
			case afterGap:
				// The server said some were missed.
			case first && !resuming:
				if seq > from {
					if n := p.lostBetween(from, seq); n > 0 {
						st.lost.Add(n)
						r.errs.add("channels", "%s: fresh subscriber's first message is %d, published from %d on", p.ch.Path(), seq, from)
					}
				}
			case seq > lastSeq+1:
				if n := p.lostBetween(lastSeq+1, seq); n > 0 {
					st.lost.Add(n)
					r.errs.add("channels", "%s: message %d after %d (resumed: %v)", p.ch.Path(), seq, lastSeq, resuming && first)
				}
			}
			first, afterGap = false, false
			lastSeq, lastID = seq, m.ID
		}
		life := time.NewTimer(time.Duration(10+rng.IntN(30)) * time.Second)
		open := true
	read:
		for {
			select {
			case m, ok := <-sub.Messages():
				if !ok {
					open = false
					break read
				}
				handle(m)
			case <-life.C:
				break read
			case <-r.runCtx.Done():
				break read
			}
		}
		life.Stop()
		if !open {
			st.dropped.Add(1)
			r.errs.add("channels", "%s: subscription ended by itself: %v", p.ch.Path(), sub.Err())
			sub.Close()
			continue
		}
		// Before leaving: everything answered by now must arrive.
		need := p.done.Load() - 1
		if need >= from || resuming {
			timeout := time.NewTimer(10 * time.Second)
		wait:
			for lastSeq < need {
				select {
				case m, ok := <-sub.Messages():
					if !ok {
						open = false
						break wait
					}
					handle(m)
				case <-timeout.C:
					break wait
				}
			}
			timeout.Stop()
			if lastSeq < need {
				lo := lastSeq + 1
				if !resuming {
					lo = max(lo, from)
				}
				if n := p.lostBetween(lo, need+1); n > 0 {
					st.lost.Add(n)
					r.errs.add("channels", "%s: messages up to %d answered, %d was the last received (open: %v)", p.ch.Path(), need, lastSeq, open)
				}
			}
		}
		sub.Close()
	}
}
