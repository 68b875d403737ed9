package node_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// failoverLog is what the clients of TestClusterFailoverUnderLoad saw.
type failoverLog struct {
	mu       sync.Mutex
	acked    map[string]bool  // produced and answered 201
	maybe    map[string]bool  // produced and answered 503: stored or not
	seen     map[string][]int // tunnel -> sequence numbers, in the order first received
	received map[string]int   // body -> times received
	bad      []string
	errs     atomic.Int64 // 503 answers
}

func (l *failoverLog) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.bad) < 10 {
		l.bad = append(l.bad, fmt.Sprintf(format, args...))
	}
}

// clean503 reports whether r is the answer of a store that cannot serve
// now: 503 with a one-line reason.
func clean503(r result) bool {
	return r.status == 503 && strings.HasPrefix(r.body, "storage unavailable") && !strings.ContainsAny(strings.TrimSuffix(r.body, "\n"), "\r\n")
}

// TestClusterFailoverUnderLoad kills a Redis Cluster master while two
// nodes produce on one node and consume (pending reads, acknowledged) on
// the other, with --redis-wait-replicas 1. Clients get clean 503s while
// the master's slots have none, the nodes recover by themselves once its
// replica is promoted (and the old master, restarted, follows it), and
// nothing acknowledged is lost: every message answered 201 is received,
// nothing is received that was not produced, and each tunnel's messages
// come first in the order they were produced.
func TestClusterFailoverUnderLoad(t *testing.T) {
	cl := redistest.StartCluster(t, redistest.ClusterOptions{})
	url := cl.URL()
	var nodes []*servertest.Node
	logs := &servertest.Logs{}
	for range 2 {
		cfg := servertest.Config()
		cfg.Store = url
		cfg.RedisWaitReplicas = 1
		cfg.RedisWaitTimeout = 500 * time.Millisecond
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelError}))
		nodes = append(nodes, servertest.Start(t, cfg))
	}
	producer, consumer := nodes[0], nodes[1]
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}

	// Tunnels over every master; the victim serves the first one's slot.
	const tunnels = 6
	names := make([]string, tunnels)
	for i := range names {
		names[i] = fmt.Sprint("fo", i)
	}
	victim, err := cl.MasterFor("{t/" + names[0] + "}")
	if err != nil {
		t.Fatal(err)
	}
	onVictim := map[string]bool{}
	for _, n := range names {
		if m, err := cl.MasterFor("{t/" + n + "}"); err == nil && m == victim {
			onVictim[n] = true
		}
	}

	log := &failoverLog{acked: map[string]bool{}, maybe: map[string]bool{}, seen: map[string][]int{}, received: map[string]int{}}
	var produced counter
	var victimOK atomic.Int64 // 201s on the victim's tunnels
	stop := make(chan struct{})
	var prod, cons sync.WaitGroup
	for _, name := range names {
		onV := onVictim[name]
		prod.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf("%s:%d", name, i)
				r, err := do(c, "POST", producer.URL+"/t/"+name, body)
				log.mu.Lock()
				switch {
				case err != nil:
					log.mu.Unlock()
					log.fail("produce %s: %v", body, err)
					return
				case r.status == 201:
					log.acked[body] = true
				case clean503(r):
					log.maybe[body] = true
					log.errs.Add(1)
				default:
					log.mu.Unlock()
					log.fail("produce %s: %d %q", body, r.status, r.body)
					return
				}
				log.mu.Unlock()
				if r.status == 201 {
					produced.add()
					if onV {
						victimOK.Add(1)
					}
				}
			}
		})
		cons.Go(func() {
			for {
				r, err := do(c, "GET", consumer.URL+"/t/"+name+"/poll?pending&timeout=1", "")
				switch {
				case err != nil:
					log.fail("consume %s: %v", name, err)
					return
				case r.status == 204:
					select {
					case <-stop:
						return // drained
					default:
						continue
					}
				case clean503(r):
					log.errs.Add(1)
					continue
				case r.status != 200:
					log.fail("consume %s: %d %q", name, r.status, r.body)
					return
				}
				log.mu.Lock()
				if log.received[r.body] == 0 {
					seq, _ := strconv.Atoi(strings.TrimPrefix(r.body, name+":"))
					log.seen[name] = append(log.seen[name], seq)
				}
				log.received[r.body]++
				log.mu.Unlock()
				// Acknowledge until it works: an ack lost to a failover
				// makes the message come again, which the log allows.
				for {
					a, err := do(c, "DELETE", consumer.URL+"/t/"+name+"/"+r.h.Get("X-Message-Id"), "")
					if err != nil {
						log.fail("ack %s: %v", r.body, err)
						return
					}
					if a.status == 204 || a.status == 404 {
						break
					}
					if !clean503(a) {
						log.fail("ack %s: %d %q", r.body, a.status, a.body)
						return
					}
					log.errs.Add(1)
				}
			}
		})
	}
	check := func() {
		t.Helper()
		log.mu.Lock()
		defer log.mu.Unlock()
		if len(log.bad) > 0 {
			t.Fatalf("clients saw more than clean 503s:\n%s\nnode errors:\n%s", strings.Join(log.bad, "\n"), logs)
		}
	}

	within(t, produced.await(300), 30*time.Second, "traffic before the failover")
	check()
	killed := time.Now()
	victim.Kill(t)
	if err := cl.WaitHealthy(redistest.ClusterTimeout); err != nil {
		t.Fatal(err)
	}
	promoted := time.Since(killed)
	// The old master comes back (as an orchestrator would restart it) and
	// follows its promoted replica, so WAIT 1 can be met again.
	victim.Restart(t)
	if err := cl.WaitHealthy(redistest.ClusterTimeout); err != nil {
		t.Fatal(err)
	}
	// Recovery needs nothing from anyone: writes on the victim's slots
	// succeed again.
	base := victimOK.Load()
	deadline := time.Now().Add(30 * time.Second)
	for victimOK.Load() < base+20 {
		if time.Now().After(deadline) {
			t.Fatalf("no writes on the failed master's slots within 30 s of its replica's promotion")
		}
		check()
		time.Sleep(20 * time.Millisecond) // the producers' progress is only seen by counting
	}
	recovered := time.Since(killed)
	within(t, produced.await(300), 30*time.Second, "traffic after the failover")
	close(stop)
	prod.Wait()
	cons.Wait()
	check()

	log.mu.Lock()
	defer log.mu.Unlock()
	lost := 0
	for body := range log.acked {
		if log.received[body] == 0 {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged message %s was never received", body)
			}
		}
	}
	again := 0
	for body, n := range log.received {
		if !log.acked[body] && !log.maybe[body] {
			t.Errorf("received %s, which was never produced", body)
		}
		again += n - 1
	}
	for name, seq := range log.seen {
		for i := 1; i < len(seq); i++ {
			if seq[i] <= seq[i-1] {
				t.Errorf("tunnel %s: message %d first received after %d", name, seq[i], seq[i-1])
				break
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged messages lost", lost, len(log.acked))
	}
	t.Logf("master %s killed: replica promoted after %v, writes on its slots again after %v; %d acknowledged, %d answered 503 (%d of them stored), %d 503s in all, %d received again",
		victim.Addr, promoted.Round(time.Millisecond), recovered.Round(time.Millisecond), len(log.acked), len(log.maybe),
		func() int {
			n := 0
			for b := range log.maybe {
				if log.received[b] > 0 {
					n++
				}
			}
			return n
		}(), log.errs.Load(), again)
}

// TestUnconfirmedWriteAnswers503: with --redis-wait-replicas a produce
// that the replicas do not confirm in time is answered 503 with a
// one-line body that says it may have been stored; a take, which does not
// wait, still works and hands it out.
func TestUnconfirmedWriteAnswers503(t *testing.T) {
	master := redistest.Start(t, redistest.Options{})
	replica := redistest.Start(t, redistest.Options{ReplicaOf: master.Addr})
	if err := replica.WaitSynced(redistest.ClusterTimeout); err != nil {
		t.Fatal(err)
	}
	cfg := servertest.Config()
	cfg.Store = master.URL()
	cfg.RedisWaitReplicas = 1
	cfg.RedisWaitTimeout = 100 * time.Millisecond
	nd := servertest.Start(t, cfg)
	c := &http.Client{Timeout: 10 * time.Second}
	if r, err := do(c, "POST", nd.URL+"/t/w", "confirmed"); err != nil || r.status != 201 {
		t.Fatalf("produce with the replica confirming: %v %v", r, err)
	}
	replica.Kill(t)
	r, err := do(c, "POST", nd.URL+"/t/w", "unconfirmed")
	if err != nil || !clean503(r) || !strings.Contains(r.body, "may have been stored") {
		t.Fatalf("produce with the replica gone: %v %v, want a one-line 503 that says it may have been stored", r, err)
	}
	for _, want := range []string{"confirmed", "unconfirmed"} {
		if r, err := do(c, "GET", nd.URL+"/t/w", ""); err != nil || r.status != 200 || r.body != want {
			t.Fatalf("consume: %v %v, want %q", r, err, want)
		}
	}
}

// TestWaitReplicasNeedsRedis: --redis-wait-replicas on another engine is
// a mistake, refused at start with a line that says what to do.
func TestWaitReplicasNeedsRedis(t *testing.T) {
	cfg := servertest.Config()
	cfg.RedisWaitReplicas = 1
	srv, err := node.New(cfg)
	if err == nil {
		srv.Shutdown(context.Background())
		t.Fatal("a memory node started with --redis-wait-replicas 1")
	}
	if !strings.Contains(err.Error(), "--redis-wait-replicas needs a Redis store") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error: %v", err)
	}
}
