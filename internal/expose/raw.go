package expose

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/postern/postern/internal/expose/muxconn"
)

// Raw connections: users' TCP connections (to a public port, or TLS passed
// through by its server name) that an agent splices to its local service,
// one yamux stream each.

// rawSet is the agents of one name that carry raw connections, each with
// the users' connections it carries. Its carrier's mu guards it.
type rawSet struct {
	agents map[*nativeAgent]int
	conns  map[net.Conn]struct{}
}

// join adds agent a.
func (rs *rawSet) join(a *nativeAgent) {
	if rs.agents == nil {
		rs.agents, rs.conns = map[*nativeAgent]int{}, map[net.Conn]struct{}{}
	}
	rs.agents[a] = 0
}

// leave removes agent a and reports whether agents are left.
func (rs *rawSet) leave(a *nativeAgent) bool {
	delete(rs.agents, a)
	return len(rs.agents) > 0
}

// pick returns the agent with the fewest connections, nil when none.
func (rs *rawSet) pick() *nativeAgent {
	var a *nativeAgent
	for x, n := range rs.agents {
		if a == nil || n < rs.agents[a] {
			a = x
		}
	}
	return a
}

// rawCarrier carries the raw connections of one transport (tcp or tls):
// it owns them, counts them, and caps them per name.
type rawCarrier struct {
	maxConns int
	log      *slog.Logger
	count    rawCounters

	mu     sync.Mutex
	closed bool
	sets   map[*rawSet]struct{} // those with connections
	wg     sync.WaitGroup       // accept loops and connections
}

// take hands user connection c to the agent of rs with the fewest
// connections, or resets it when there is none or rs is at its cap.
func (rc *rawCarrier) take(rs *rawSet, c net.Conn) {
	rc.mu.Lock()
	a := rs.pick()
	outcome := ""
	switch {
	case rc.closed || a == nil:
		outcome = "no_agent"
	case len(rs.conns) >= rc.maxConns:
		outcome = "over_cap"
	default:
		rs.agents[a]++
		rs.conns[c] = struct{}{}
		if rc.sets == nil {
			rc.sets = map[*rawSet]struct{}{}
		}
		rc.sets[rs] = struct{}{}
		rc.wg.Add(1)
	}
	rc.mu.Unlock()
	if outcome != "" {
		rc.count.conns.WithLabelValues(outcome).Inc()
		muxconn.Reset(c)
		return
	}
	go rc.carry(rs, a, c)
}

// carry splices user connection c with a stream to agent a.
func (rc *rawCarrier) carry(rs *rawSet, a *nativeAgent, c net.Conn) {
	defer rc.wg.Done()
	defer func() {
		rc.mu.Lock()
		if _, ok := rs.agents[a]; ok {
			rs.agents[a]--
		}
		delete(rs.conns, c)
		if len(rs.conns) == 0 {
			delete(rc.sets, rs)
		}
		rc.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	st, err := a.open(ctx)
	cancel()
	hc, ok := c.(muxconn.HalfCloser)
	if err != nil || !ok {
		rc.count.conns.WithLabelValues("no_agent").Inc()
		muxconn.Reset(c)
		return
	}
	rc.count.conns.WithLabelValues("ok").Inc()
	rc.count.open.Inc()
	defer rc.count.open.Dec()
	muxconn.Splice(st, hc, rc.count.addIn, rc.count.addOut)
}

// closeConns takes no more connections and resets those it carries.
func (rc *rawCarrier) closeConns() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.closed = true
	for rs := range rc.sets {
		for c := range rs.conns {
			muxconn.Reset(c)
		}
	}
}

// wait waits for the accept loops and connections to end.
func (rc *rawCarrier) wait() { rc.wg.Wait() }
