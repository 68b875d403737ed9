package filestore_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/cli"
	"github.com/postern/postern/internal/store"
)

// The crash test runs `postern serve` as a child process: this test binary
// itself, re-executed with crashChildEnv set, so that TestMain hands its
// arguments to the command line instead of running tests.
const crashChildEnv = "POSTERN_CRASH_TEST_CHILD"

// runCrashChild is the child's main.
func runCrashChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.Main(ctx, os.Args[1:], cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
}

// crashRounds is how many kill -9 rounds the test runs; POSTERN_CRASH_ROUNDS
// raises it for a long run.
func crashRounds(t *testing.T) int {
	n := 20
	if v := os.Getenv("POSTERN_CRASH_ROUNDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("POSTERN_CRASH_ROUNDS=%q: want a positive number", v)
		}
	}
	return n
}

var listenRE = regexp.MustCompile(`postern (?:\S+ )?listening(?: on https?://|"? addr=)(\S+)`)

// child is one running `postern serve`.
type child struct {
	cmd  *exec.Cmd
	url  string
	done chan error
}

func startChild(t *testing.T, dir, logPath string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "--listen", "127.0.0.1:0", "--store", "file:"+dir)
	cmd.Env = append(os.Environ(), crashChildEnv+"=1")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan error, 1)}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		fmt.Fprintln(logf, sc.Text())
		if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
			c.url = "http://" + m[1]
			break
		}
	}
	if c.url == "" {
		cmd.Process.Kill()
		err := cmd.Wait()
		log, _ := os.ReadFile(logPath)
		t.Fatalf("postern serve did not start (%v):\n%s", err, log)
	}
	go func() {
		// Keep the log, and keep the pipe drained so the child never blocks.
		f, _ := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0o600)
		io.Copy(f, stderr)
		f.Close()
		c.done <- cmd.Wait()
	}()
	return c
}

// Message states in the model.
const (
	stQueued  = iota // produce answered 201
	stPending        // a pending read answered 200 with it
	stGone           // acknowledged (204), replied to (201) or consumed (200)
)

type tracked struct {
	tunnel string
	body   string
	state  int
	reply  string // the reply stored for it, until read back
	// maybe marks a state change that may or may not have happened: a
	// request about this message was in flight when the server was killed.
	maybe bool
	// unsettled marks a read answered 200 whose settling (after the
	// answer) a kill may have cut off: the message may be queued again.
	unsettled bool
	// goneAt is the model's clock when the message was acknowledged.
	goneAt int
	// replyUnsure marks a reply whose request failed: it may or may not
	// be stored, whatever happens to the message afterwards (another
	// consumer reading it again does not settle that question).
	replyUnsure bool
	// history is what the clients did with the message and were told,
	// printed when a check of it fails.
	history []string
}

// note adds an event to msg's history; m.mu is held.
func (m *crashModel) note(msg *tracked, format string, args ...any) {
	msg.history = append(msg.history, fmt.Sprintf("[%d] ", m.clock)+fmt.Sprintf(format, args...))
}

// story is msg's history for a failure message.
func (msg *tracked) story() string {
	return "\n\thistory: " + strings.Join(msg.history, "\n\t         ")
}

// crashModel is what the clients were told, over all rounds.
type crashModel struct {
	mu   sync.Mutex
	msgs map[string]*tracked // by tunnel + " " + id
	// unsure counts requests per tunnel that were in flight at a kill and
	// could have changed the state of a message the model cannot name: a
	// produce (an extra message) or a read (a queued message taken).
	unsureProduce, unsureTake map[string]int
	sent                      map[string]bool // every body ever sent
	clock                     int             // counts events, to order reads after acknowledgements
	produced, acked, checked  int             // totals for the log
	redelivered               int             // reads whose settling a kill cut off
	// killed is set just before each kill; failedAlive counts requests
	// that failed while the server had not been killed (a healthy server
	// answers every request), with the first such errors kept.
	killed      atomic.Bool
	failedAlive []string
}

// failed records a request that got no answer: the kill, or not.
func (m *crashModel) failed(what string, err error) {
	if m.killed.Load() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.failedAlive) < 20 {
		m.failedAlive = append(m.failedAlive, fmt.Sprintf("%s: %v", what, err))
	}
}

func (m *crashModel) now() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.clock++
	return m.clock
}

// gone records that msg was acknowledged; m.mu is held.
func (m *crashModel) gone(msg *tracked) {
	m.clock++
	m.acked++
	msg.state, msg.goneAt, msg.maybe, msg.unsettled = stGone, m.clock, false, false
}

func (m *crashModel) key(tunnel, id string) string { return tunnel + " " + id }

// TestCrashLosesNoAcknowledgedWrite kills `postern serve` with SIGKILL at
// random moments while 32 clients produce, read pending, acknowledge and
// reply, restarts it on the same data directory and checks that every
// answered write is there: each message in its state, in order per tunnel,
// each reply readable. A read answered just before the kill may come back
// queued (its delivery is settled after the answer): at-least-once.
func TestCrashLosesNoAcknowledgedWrite(t *testing.T) {
	rounds := crashRounds(t)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("POSTERN_CRASH_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("%d rounds, seed %d (POSTERN_CRASH_SEED reproduces the kill timing)", rounds, seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := filepath.Join(t.TempDir(), "data")
	logPath := filepath.Join(t.TempDir(), "serve.log")
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("server log:\n%s", log)
		}
	})
	m := &crashModel{msgs: map[string]*tracked{}, unsureProduce: map[string]int{}, unsureTake: map[string]int{}, sent: map[string]bool{}}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	for round := range rounds {
		c := startChild(t, dir, logPath)
		verifyAfterRestart(t, hc, c.url, m, round)
		kill := time.Duration(20+rng.IntN(300)) * time.Millisecond
		runLoad(t, hc, c, m, round, kill)
		if err := <-c.done; err == nil {
			t.Fatalf("round %d: server exited cleanly, want killed", round)
		}
		tr.CloseIdleConnections()
	}
	// A last start: check, drain every tunnel in order, and stop it
	// gracefully.
	c := startChild(t, dir, logPath)
	verifyAfterRestart(t, hc, c.url, m, rounds)
	drainInOrder(t, hc, c.url, m)
	c.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-c.done; err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	tr.CloseIdleConnections()
	if len(m.failedAlive) > 0 {
		t.Logf("requests that failed while the server was up (the model counts them as unsure): %s", strings.Join(m.failedAlive, "; "))
	}
	t.Logf("%d kills: %d produces and %d acknowledgements, replies or reads answered; %d message states checked after restarts; none lost; %d reads not settled at a kill, queued again",
		rounds, m.produced, m.acked, m.checked, m.redelivered)
}

const crashTunnels = 8

func tunnelName(i int) string { return fmt.Sprintf("crash-%d", i) }

type answer struct {
	status int
	id     string
	body   string
}

func do(hc *http.Client, method, url, body string) (answer, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return answer{}, err
	}
	res, err := hc.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{status: res.StatusCode, id: res.Header.Get("X-Message-Id"), body: string(b)}, nil
}

// runLoad runs 12 producers and 20 consumers until the server is killed
// after kill, each worker stopping at its first failed request.
func runLoad(t *testing.T, hc *http.Client, c *child, m *crashModel, round int, kill time.Duration) {
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	m.killed.Store(false)
	timer := time.AfterFunc(kill, func() {
		m.killed.Store(true)
		c.cmd.Process.Kill()
	})
	defer timer.Stop()
	for w := range 32 {
		tunnel := tunnelName(w % crashTunnels)
		base := c.url + "/t/" + tunnel
		if w < 12 {
			wg.Go(func() {
				for n := 0; ; n++ {
					body := fmt.Sprintf("r%d-w%d-%d", round, w, n)
					m.mu.Lock()
					m.sent[body] = true
					m.mu.Unlock()
					a, err := do(hc, "POST", base, body)
					if err != nil {
						m.failed("produce "+body, err)
						m.mu.Lock()
						m.unsureProduce[tunnel]++
						m.mu.Unlock()
						return
					}
					switch a.status {
					case 201:
						m.mu.Lock()
						// A consumer may have seen it before this answer.
						k := m.key(tunnel, a.id)
						if m.msgs[k] == nil {
							m.msgs[k] = &tracked{tunnel: tunnel, body: body}
						}
						m.note(m.msgs[k], "w%d produce: 201 %s", w, a.id)
						m.produced++
						m.mu.Unlock()
					case 507: // the tunnel is full: nothing stored
					default:
						errs <- fmt.Errorf("produce: %d %q", a.status, a.body)
						return
					}
				}
			})
			continue
		}
		plain := w%5 == 0 // some consumers read without pending mode
		wg.Go(func() {
			for n := 0; ; n++ {
				q := "?pending"
				if plain {
					q = ""
				}
				started := m.now()
				a, err := do(hc, "GET", base+q, "")
				if err != nil {
					m.failed("consume "+tunnel, err)
					m.mu.Lock()
					m.unsureTake[tunnel]++
					m.mu.Unlock()
					return
				}
				if a.status == 204 {
					continue
				}
				if a.status != 200 {
					errs <- fmt.Errorf("consume: %d %q", a.status, a.body)
					return
				}
				k := m.key(tunnel, a.id)
				m.mu.Lock()
				msg := m.msgs[k]
				switch {
				case msg == nil && !m.sent[a.body]:
					m.mu.Unlock()
					errs <- fmt.Errorf("read %s %q, which nobody sent", k, a.body)
					return
				case msg == nil: // its produce was in flight at a kill
					msg = &tracked{tunnel: tunnel, body: a.body}
					m.msgs[k] = msg
					m.note(msg, "w%d read it before its produce was answered", w)
				case msg.body != a.body:
					m.mu.Unlock()
					errs <- fmt.Errorf("read %s as %q, it was sent as %q", k, a.body, msg.body)
					return
				case msg.state == stGone && msg.goneAt < started:
					m.mu.Unlock()
					errs <- fmt.Errorf("read %s (%q) again after it was acknowledged (asked at [%d])%s", k, a.body, started, msg.story())
					return
				case msg.state == stGone:
					// Read at the server before the acknowledgement that
					// the model saw first.
					m.note(msg, "w%d read%s it (asked at [%d], before it was gone)", w, q, started)
					m.mu.Unlock()
					continue
				}
				m.note(msg, "w%d read%s it (asked at [%d])", w, q, started)
				msg.maybe = false
				if plain {
					m.note(msg, "w%d consumed it", w)
					m.gone(msg)
					msg.unsettled = true
					m.mu.Unlock()
					continue
				}
				msg.state, msg.unsettled = stPending, true
				m.mu.Unlock()
				if n%3 == 0 {
					reply := "re:" + a.body
					ra, err := do(hc, "POST", base+"/"+a.id+"/reply", reply)
					if err != nil {
						m.failed("reply "+k, err)
					}
					m.mu.Lock()
					switch {
					case err != nil:
						m.note(msg, "w%d reply: %v", w, err)
						msg.maybe, msg.replyUnsure = true, true
						msg.reply = reply
					case ra.status == 201:
						m.gone(msg)
						m.note(msg, "w%d reply: 201", w)
						msg.reply = reply
					default:
						m.note(msg, "w%d reply: %d %q", w, ra.status, ra.body)
					}
					m.mu.Unlock()
					if err != nil {
						return
					}
					continue
				}
				da, err := do(hc, "DELETE", base+"/"+a.id, "")
				if err != nil {
					m.failed("ack "+k, err)
				}
				m.mu.Lock()
				switch {
				case err != nil:
					m.note(msg, "w%d ack: %v", w, err)
					msg.maybe = true
				case msg.state != stGone:
					m.note(msg, "w%d ack: %d", w, da.status)
					m.gone(msg)
				default:
					m.note(msg, "w%d ack: %d (gone already)", w, da.status)
				}
				m.mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("round %d: %v", round, err)
	}
}

// verifyAfterRestart checks the state of every message the model knows.
func verifyAfterRestart(t *testing.T, hc *http.Client, url string, m *crashModel, round int) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	var gone []string
	for k, msg := range m.msgs {
		tunnel, id, _ := strings.Cut(k, " ")
		if msg.reply != "" {
			a, err := do(hc, "GET", url+"/t/"+tunnel+"/"+id+"/reply", "")
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case a.status == 200 && a.body == msg.reply:
				msg.state, msg.reply, msg.maybe = stGone, "", false
			case a.status == 204 && (msg.maybe || msg.replyUnsure):
				msg.reply = "" // the reply was in flight and did not make it
			default:
				t.Fatalf("after restart %d: reply to %s (%q): %d %q, want %q%s%s", round, k, msg.body, a.status, a.body, msg.reply, msg.story(), m.alive())
			}
			msg.replyUnsure = false
		}
		a, err := do(hc, "GET", url+"/t/"+tunnel+"/"+id, "")
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]int{201: stQueued, 202: stPending, 204: stGone}[a.status]
		want := msg.state
		ok := got == want ||
			msg.maybe && got == stGone && want == stPending || // ack or reply in flight
			msg.unsettled && got == stQueued && want != stQueued || // read, not settled at the kill: at-least-once
			want == stQueued && got == stPending && m.unsureTake[tunnel] > 0 ||
			want == stQueued && got == stGone && m.unsureTake[tunnel] > 0
		if !ok || (a.status != 201 && a.status != 202 && a.status != 204) {
			t.Fatalf("after restart %d: %s (%q) answers %d, the model says state %d (maybe %v)%s%s", round, k, msg.body, a.status, want, msg.maybe, msg.story(), m.alive())
		}
		if msg.unsettled && got == stQueued && want != stQueued {
			m.redelivered++
		}
		m.note(msg, "after restart %d: %d", round, a.status)
		msg.state, msg.maybe, msg.unsettled = got, false, false
		m.checked++
		if got == stGone {
			gone = append(gone, k)
		}
	}
	// What is gone for good need not be asked about again.
	for _, k := range gone {
		delete(m.msgs, k)
	}
	clear(m.unsureTake)
}

// alive lists requests that failed while the server was not killed.
func (m *crashModel) alive() string {
	if len(m.failedAlive) == 0 {
		return ""
	}
	return "\n\trequests that failed before the kill: " + strings.Join(m.failedAlive, "; ")
}

// drainInOrder reads every tunnel empty in pending mode, acknowledging
// each message: they come in id order, and exactly the messages the model
// holds come, plus any whose produce was in flight at a kill.
func drainInOrder(t *testing.T, hc *http.Client, url string, m *crashModel) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range crashTunnels {
		tunnel := tunnelName(i)
		var ids []string
		for {
			a, err := do(hc, "GET", url+"/t/"+tunnel+"?pending", "")
			if err != nil {
				t.Fatal(err)
			}
			if a.status == 204 {
				break
			}
			k := m.key(tunnel, a.id)
			msg := m.msgs[k]
			switch {
			case msg == nil && (m.unsureProduce[tunnel] == 0 || !m.sent[a.body]):
				t.Fatalf("drain: %s (%q) is unknown", k, a.body)
			case msg == nil:
				m.unsureProduce[tunnel]--
			case msg.body != a.body:
				t.Fatalf("drain: %s is %q, was sent as %q", k, a.body, msg.body)
			}
			delete(m.msgs, k)
			ids = append(ids, a.id)
			if a, err := do(hc, "DELETE", url+"/t/"+tunnel+"/"+a.id, ""); err != nil || a.status != 204 {
				t.Fatalf("drain ack: %v %d", err, a.status)
			}
		}
		// A pending read hands out the messages marked pending first, then
		// the queued ones, each group in id order. After a kill both can
		// interleave in the queue: a consumer's take of an older message
		// was never settled (its answer died with the process), so it is
		// queued again, while a newer one taken beside it was settled as
		// pending. So the drain is at most two ascending runs.
		descents := 0
		for j := 1; j < len(ids); j++ {
			if compareIDs(ids[j-1], ids[j]) > 0 {
				descents++
			}
		}
		if descents > 1 {
			t.Fatalf("tunnel %s drained out of order (pending first, then queued, each in order): %v", tunnel, ids)
		}
	}
	for k, msg := range m.msgs {
		t.Errorf("message %s (%q) was acknowledged as stored and never came back%s", k, msg.body, msg.story())
	}
}

func compareIDs(a, b string) int {
	x, _ := store.ParseID(a)
	y, _ := store.ParseID(b)
	return x.Compare(y)
}
