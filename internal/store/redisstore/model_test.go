package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/store"
	"github.com/postern/postern/internal/store/memstore"
	"github.com/postern/postern/internal/store/redisstore/redistest"
	"github.com/postern/postern/internal/store/storetest"
)

// TestSameAsMemory drives the Redis engine and the memory engine (whose
// semantics are the spec) with the same random operations on the same
// manual clock and checks that they answer alike: every combination of
// pending, leases settled or run out, dedup windows, limits, trimming,
// expiry and replies.
func TestSameAsMemory(t *testing.T) {
	for seed := range 8 {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			runModel(t, uint64(seed), 2500)
		})
	}
}

// engineView tracks one engine and the ids it gave each body.
type engineView struct {
	e      store.Engine
	ids    map[string]store.ID    // body -> id
	bodies map[string]string      // key + id -> body (ids differ per engine, and are per key)
	taken  map[string]store.Lease // body -> its lease, not settled yet
}

// modelLease is the lease of the model's takes: the clock steps of up to
// 30 ms let some run out.
const modelLease = 40 * time.Millisecond

func runModel(t *testing.T, seed uint64, steps int) {
	ctx := context.Background()
	c := storetest.NewClock()
	mem := memstore.New(memstore.Options{Now: c.Now, SweepInterval: -1})
	defer mem.Close()
	red := open(t, redistest.URL(t), c)
	defer red.Close()
	views := []*engineView{
		{e: mem, ids: map[string]store.ID{}, bodies: map[string]string{}, taken: map[string]store.Lease{}},
		{e: red, ids: map[string]store.ID{}, bodies: map[string]string{}, taken: map[string]store.Lease{}},
	}
	rng := rand.New(rand.NewPCG(seed, 99))
	keys := []string{"a", "b", "c{x}"}
	dedups := []string{"", "", "k1", "k2", "k3"}
	bodies := map[string][]string{} // key -> bodies appended to it, in order
	lastPending := map[string]string{}
	n := 0
	var history []string
	for step := range steps {
		key := keys[rng.IntN(len(keys))]
		op := rng.IntN(100)
		desc := ""
		var out [2]string
		pickBody := func() string {
			bs := bodies[key]
			if len(bs) == 0 {
				return ""
			}
			// Mostly recent messages: those are the ones still around.
			return bs[max(0, len(bs)-1-rng.IntN(min(len(bs), 8)))]
		}
		switch {
		case op < 30:
			n++
			body := fmt.Sprintf("m%d", n)
			opts := store.AppendOptions{DedupKey: dedups[rng.IntN(len(dedups))]}
			if rng.IntN(3) == 0 {
				opts.TTL = time.Duration(1+rng.IntN(50)) * time.Millisecond
			}
			if opts.DedupKey != "" && rng.IntN(2) == 0 {
				opts.DedupWindow = time.Duration(rng.IntN(80)) * time.Millisecond
			}
			opts.KeepFirst = rng.IntN(3) == 0
			if rng.IntN(5) == 0 {
				opts.Limit = 1 + rng.IntN(6)
			}
			if rng.IntN(5) == 0 {
				opts.MaxLen = 1 + rng.IntN(6)
			}
			desc = fmt.Sprintf("Append(%s, %s, %+v)", key, body, opts)
			bodies[key] = append(bodies[key], body)
			for i, v := range views {
				r, err := v.e.Append(ctx, key, store.Message{ContentType: "ct/" + body, Body: []byte(body)}, opts)
				var full *store.FullError
				switch {
				case errors.As(err, &full):
					out[i] = fmt.Sprintf("full %d", full.Len)
				case err != nil:
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				default:
					matched := ""
					if r.Duplicate {
						matched = v.bodies[key+r.ID.String()]
					} else {
						v.ids[body] = r.ID
						v.bodies[key+r.ID.String()] = body
						matched = body
					}
					out[i] = fmt.Sprintf("dup=%v id->%s len=%d trimmed=%d", r.Duplicate, matched, r.Len, r.Trimmed)
				}
			}
		case op < 50:
			mode := store.TakeMode(rng.IntN(2))
			desc = fmt.Sprintf("Take(%s, %v)", key, mode)
			for i, v := range views {
				l, ok, err := v.e.Take(ctx, key, mode, modelLease)
				if err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
				out[i] = fmt.Sprint(ok, " ", describe(v, key, l.Message), " settle=", l.Token != 0)
				if ok && l.Token != 0 {
					v.taken[string(l.Body)] = l
				}
				if ok && mode == store.TakePending {
					lastPending[key] = v.bodies[key+l.ID.String()]
				}
			}
		case op < 55:
			max := rng.IntN(3)
			desc = fmt.Sprintf("TakeAll(%s, %d)", key, max)
			for i, v := range views {
				ls, err := v.e.TakeAll(ctx, key, max, modelLease)
				if err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
				s := ""
				for _, l := range ls {
					s += describe(v, key, l.Message) + ";"
					v.taken[string(l.Body)] = l
				}
				out[i] = s
			}
		case op < 63:
			body := pickBody()
			delivered := rng.IntN(2) == 0
			twice := rng.IntN(4) == 0 // kept to be settled again
			desc = fmt.Sprintf("Settle(%s, %s, %v)", key, body, delivered)
			for i, v := range views {
				l, ok := v.taken[body]
				if !ok {
					continue
				}
				if !twice {
					delete(v.taken, body)
				}
				if err := v.e.Settle(ctx, key, []store.Lease{l}, delivered); err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
			}
		case op < 70:
			body := pickBody()
			desc = fmt.Sprintf("Ack(%s, %s)", key, body)
			for i, v := range views {
				ok, err := v.e.Ack(ctx, key, v.ids[body])
				if err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
				out[i] = fmt.Sprint(ok)
			}
		case op < 76:
			body := pickBody()
			desc = fmt.Sprintf("Status(%s, %s)", key, body)
			for i, v := range views {
				s, err := v.e.Status(ctx, key, v.ids[body])
				if err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
				out[i] = fmt.Sprint(s)
			}
		case op < 80:
			desc = fmt.Sprintf("Len(%s)", key)
			for i, v := range views {
				l, err := v.e.Len(ctx, key)
				if err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
				out[i] = fmt.Sprint(l)
			}
		case op < 82:
			desc = fmt.Sprintf("Clear(%s)", key)
			for i, v := range views {
				l, err := v.e.Clear(ctx, key)
				if err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
				out[i] = fmt.Sprint(l)
			}
		case op < 88:
			body := pickBody()
			if b, ok := lastPending[key]; ok && rng.IntN(3) > 0 {
				body = b
			}
			ttl := time.Duration(1+rng.IntN(40)) * time.Millisecond
			desc = fmt.Sprintf("Reply(%s, %s, %v)", key, body, ttl)
			for i, v := range views {
				ok, err := v.e.Reply(ctx, key, v.ids[body], store.Message{ContentType: "r", Body: []byte("re:" + body)}, ttl)
				if err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
				out[i] = fmt.Sprint(ok)
			}
		case op < 92:
			body := pickBody()
			if b, ok := lastPending[key]; ok && rng.IntN(2) > 0 {
				body = b
			}
			desc = fmt.Sprintf("TakeReply(%s, %s)", key, body)
			for i, v := range views {
				m, ok, err := v.e.TakeReply(ctx, key, v.ids[body])
				if err != nil {
					t.Fatalf("step %d %s: engine %d: %v", step, desc, i, err)
				}
				out[i] = fmt.Sprint(ok, " ", string(m.Body), " ", m.ContentType)
			}
		default:
			d := time.Duration(rng.IntN(30)) * time.Millisecond
			desc = fmt.Sprintf("Advance(%v)", d)
			c.Advance(d)
		}
		history = append(history, fmt.Sprintf("step %d %s: %s", step, desc, out[0]))
		if out[0] != out[1] {
			for _, h := range history {
				if strings.Contains(h, "("+key) || strings.Contains(h, "Advance") {
					t.Log(h)
				}
			}
			t.Fatalf("step %d %s:\n memory: %s\n redis:  %s", step, desc, out[0], out[1])
		}
	}
}

func describe(v *engineView, key string, m store.Message) string {
	if m.ID.IsZero() {
		return "-"
	}
	exp := "never"
	if !m.ExpiresAt.IsZero() {
		exp = fmt.Sprint(m.ExpiresAt.UnixMilli())
	}
	return fmt.Sprintf("%s ct=%s dk=%s exp=%s", v.bodies[key+m.ID.String()], m.ContentType, m.DedupKey, exp)
}
