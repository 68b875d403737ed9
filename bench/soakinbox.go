package main

// The soak's inbox: actors sending to each other and receiving all the
// time; every copy and every ack asked for must arrive once.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/client"
)

// soakInbox is the record of the inbox actors.
type soakInbox struct {
	mu         sync.Mutex
	msgs       map[string]*soakMail // by idempotency key
	sends      int                  // send and exchange requests answered 200
	receives   int                  // receive requests answered 200
	delivered  int
	acks       int
	duplicated int
	stray      int // entries nobody sent, or for the wrong actor
	sendersOff atomic.Bool
}

type soakMail struct {
	from       int
	to         []int
	expectsAck bool
	accepted   bool        // the send was answered 200
	got        map[int]int // destination -> copies received
	acked      map[int]int // destination -> acks received by the sender
}

func soakActor(i int) string { return fmt.Sprintf("soak-actor-%d", i) }

func soakActorIndex(name string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(name, "soak-actor-"))
	if err != nil || !strings.HasPrefix(name, "soak-actor-") || n < 0 || n >= soakInboxActors {
		return -1
	}
	return n
}

func soakMailBody(key string) json.RawMessage {
	return json.RawMessage(strconv.Quote("body of " + key))
}

// handle checks the entries actor me received.
func (ib *soakInbox) handle(me int, mail []client.Mail) []string {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	var problems []string
	for _, e := range mail {
		switch {
		case e.Message != nil:
			m := ib.msgs[e.Message.IdempotencyKey]
			if m == nil || soakActorIndex(e.Message.Origin) != m.from || !slices.Contains(m.to, me) ||
				!bytes.Equal(e.Message.Body, soakMailBody(e.Message.IdempotencyKey)) || e.Message.ExpectsAck != m.expectsAck {
				ib.stray++
				problems = append(problems, fmt.Sprintf("%s got an unexpected message %+v", soakActor(me), *e.Message))
				continue
			}
			m.got[me]++
			ib.delivered++
			if m.got[me] > 1 {
				ib.duplicated++
				problems = append(problems, fmt.Sprintf("%s got %s %d times", soakActor(me), e.Message.IdempotencyKey, m.got[me]))
			}
		case e.Ack != nil:
			m := ib.msgs[e.Ack.IdempotencyKey]
			dest := soakActorIndex(e.Ack.Destination)
			if m == nil || m.from != me || !m.expectsAck || !slices.Contains(m.to, dest) {
				ib.stray++
				problems = append(problems, fmt.Sprintf("%s got an unexpected ack %+v", soakActor(me), *e.Ack))
				continue
			}
			m.acked[dest]++
			ib.acks++
			if m.acked[dest] > 1 {
				ib.duplicated++
				problems = append(problems, fmt.Sprintf("%s got the ack of %s by %s %d times", soakActor(me), e.Ack.IdempotencyKey, e.Ack.Destination, m.acked[dest]))
			}
		}
	}
	return problems
}

// missing counts copies and acks of accepted messages not yet received.
func (ib *soakInbox) missing() (copies, acks int) {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	for _, m := range ib.msgs {
		if !m.accepted {
			continue
		}
		for _, d := range m.to {
			if m.got[d] == 0 {
				copies++
			}
			if m.expectsAck && m.acked[d] == 0 {
				acks++
			}
		}
	}
	return copies, acks
}

func (r *soakRun) startInbox(wg *sync.WaitGroup) *soakInbox {
	ib := &soakInbox{msgs: map[string]*soakMail{}}
	var senders sync.WaitGroup
	recvCtx, stopRecv := context.WithCancel(r.hardCtx)
	for i := range soakInboxActors {
		actor := r.cl.Inbox(soakActor(i))
		exchange := i >= soakInboxActors/2 // half send with exchange
		senders.Go(func() {
			paced(r.runCtx, soakInboxRate, func(seq int) {
				key := fmt.Sprintf("soak-%02d-%08d", i, seq)
				to := []int{(i + 1 + seq%(soakInboxActors-1)) % soakInboxActors}
				if seq%3 == 0 {
					to = append(to, (to[0]+1+seq%(soakInboxActors-2))%soakInboxActors)
					if to[1] == i {
						to[1] = (to[1] + 1) % soakInboxActors
					}
					if to[1] == to[0] {
						to = to[:1]
					}
				}
				m := &soakMail{from: i, to: to, expectsAck: seq%4 != 0, got: map[int]int{}, acked: map[int]int{}}
				ib.mu.Lock()
				ib.msgs[key] = m
				ib.mu.Unlock()
				env := client.Envelope{IdempotencyKey: key, Body: soakMailBody(key), ExpectsAck: m.expectsAck}
				for _, d := range to {
					env.Destination = append(env.Destination, soakActor(d))
				}
				ctx, cancel := r.reqCtx()
				defer cancel()
				if exchange {
					mail, _, err := actor.Exchange(ctx, env)
					if err != nil {
						r.errs.add("inbox", "exchange %s: %v", key, err)
						return
					}
					ib.accepted(m)
					for _, p := range ib.handle(i, mail) {
						r.errs.add("inbox", "%s", p)
					}
					return
				}
				n, err := actor.Send(ctx, env)
				if err != nil {
					r.errs.add("inbox", "send %s: %v", key, err)
					return
				}
				if n != len(to) {
					r.errs.add("inbox", "send %s: sent %d, want %d", key, n, len(to))
				}
				ib.accepted(m)
			})
		})
		wg.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-recvCtx.Done():
					return
				case <-t.C:
				}
				for more := true; more; {
					ctx, cancel := r.reqCtx()
					mail, remaining, err := actor.Receive(ctx)
					cancel()
					if err != nil {
						r.errs.add("inbox", "receive %s: %v", actor.Actor(), err)
						break
					}
					ib.mu.Lock()
					ib.receives++
					ib.mu.Unlock()
					for _, p := range ib.handle(i, mail) {
						r.errs.add("inbox", "%s", p)
					}
					more = remaining > 0
				}
			}
		})
	}
	// Stop receiving once the senders stopped and everything arrived, or
	// soakDrain later.
	wg.Go(func() {
		defer stopRecv()
		senders.Wait()
		ib.sendersOff.Store(true)
		deadline := time.Now().Add(soakDrain)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			copies, acks := ib.missing()
			if copies == 0 && acks == 0 {
				return
			}
			if time.Now().After(deadline) {
				r.errs.add("inbox", "%d copies and %d acks still missing %v after the load stopped", copies, acks, soakDrain)
				return
			}
			select {
			case <-r.hardCtx.Done():
				return
			case <-t.C:
			}
		}
	})
	return ib
}

func (ib *soakInbox) accepted(m *soakMail) {
	ib.mu.Lock()
	m.accepted = true
	ib.sends++
	ib.mu.Unlock()
}
