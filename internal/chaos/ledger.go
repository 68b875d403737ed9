package chaos

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/postern/postern/internal/store"
)

// ledger is what the clients of one round were told and what they got.
type ledger struct {
	mu      sync.Mutex
	tunnels map[string]*tunnelLog
	inboxes map[string]*inboxLog // by receiver
}

type tunnelLog struct {
	sent map[int]sent // by sequence number
	got  []receipt
}

// sent is a produce's outcome: acknowledged with id, or unknown (the
// client gave up: it may or may not be stored).
type sent struct {
	acked bool
	id    string
}

type receipt struct {
	seq      int
	id       string
	consumer string
}

type inboxLog struct {
	sent map[string]bool // idempotency key -> acknowledged
	got  map[string]int  // idempotency key -> times received
}

func newLedger() *ledger {
	return &ledger{tunnels: map[string]*tunnelLog{}, inboxes: map[string]*inboxLog{}}
}

func (l *ledger) tunnel(name string) *tunnelLog {
	t := l.tunnels[name]
	if t == nil {
		t = &tunnelLog{sent: map[int]sent{}}
		l.tunnels[name] = t
	}
	return t
}

func (l *ledger) inbox(to string) *inboxLog {
	ib := l.inboxes[to]
	if ib == nil {
		ib = &inboxLog{sent: map[string]bool{}, got: map[string]int{}}
		l.inboxes[to] = ib
	}
	return ib
}

// body is the message a tunnel's producer sends as number seq.
func body(tunnel string, seq int) string { return tunnel + "/" + strconv.Itoa(seq) }

func (l *ledger) produced(tunnel string, seq int, acked bool, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tunnel(tunnel).sent[seq] = sent{acked: acked, id: id}
}

// received records a message a consumer got; a body that no producer of
// the tunnel sent gets seq -1.
func (l *ledger) received(tunnel, msgBody, id, consumer string) {
	seq := -1
	if rest, ok := strings.CutPrefix(msgBody, tunnel+"/"); ok {
		if n, err := strconv.Atoi(rest); err == nil {
			seq = n
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tunnel(tunnel)
	t.got = append(t.got, receipt{seq: seq, id: id, consumer: consumer})
}

func (l *ledger) sentMail(to, key string, acked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inbox(to).sent[key] = acked
}

func (l *ledger) gotMail(to, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inbox(to).got[key]++
}

// Report counts what a round (or several) showed.
type Report struct {
	// Engine names what the rounds ran on, for reports that add up
	// several.
	Engine string
	Rounds int
	// Produced counts produces acknowledged (201); Unknown those the
	// client gave up on (their outcome unknown); Received the messages
	// consumers got, repeats included.
	Produced, Unknown, Received int
	// Lost counts acknowledged messages nobody received; Invented
	// messages received that nobody sent; Doubled messages stored twice
	// (two ids for one produce: an idempotent produce that failed);
	// Misordered acknowledged messages whose ids do not follow their
	// producer's order.
	Lost, Invented, Doubled, Misordered int
	// Redelivered counts receipts of a message already received (the
	// at-least-once of a failed settling); LateReceipts receipts of a
	// message older than one the same consumer had (a redelivery, or a
	// take whose lease a failure held).
	Redelivered, LateReceipts int
	// MailSent, MailReceived, MailLost, MailInvented, MailRepeated are
	// the same for inbox messages.
	MailSent, MailReceived, MailLost, MailInvented, MailRepeated int
	// Problems names the first few violations.
	Problems []string
}

// OK reports whether nothing acknowledged was lost, nothing invented,
// nothing stored twice and nothing stored out of order.
func (r Report) OK() bool {
	return r.Lost == 0 && r.Invented == 0 && r.Doubled == 0 && r.Misordered == 0 && r.MailLost == 0 && r.MailInvented == 0
}

// Add adds o to r.
func (r *Report) Add(o Report) {
	r.Rounds += o.Rounds
	r.Produced += o.Produced
	r.Unknown += o.Unknown
	r.Received += o.Received
	r.Lost += o.Lost
	r.Invented += o.Invented
	r.Doubled += o.Doubled
	r.Misordered += o.Misordered
	r.Redelivered += o.Redelivered
	r.LateReceipts += o.LateReceipts
	r.MailSent += o.MailSent
	r.MailReceived += o.MailReceived
	r.MailLost += o.MailLost
	r.MailInvented += o.MailInvented
	r.MailRepeated += o.MailRepeated
	if len(r.Problems) < 10 {
		r.Problems = append(r.Problems, o.Problems...)
	}
}

func (r Report) String() string {
	return fmt.Sprintf("%d rounds: %d produced (%d outcomes unknown), %d received; lost %d, invented %d, stored twice %d, misordered %d; redelivered %d, late receipts %d; inbox: %d sent, %d received, lost %d, invented %d, repeated %d",
		r.Rounds, r.Produced, r.Unknown, r.Received, r.Lost, r.Invented, r.Doubled, r.Misordered, r.Redelivered, r.LateReceipts,
		r.MailSent, r.MailReceived, r.MailLost, r.MailInvented, r.MailRepeated)
}

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) < 10 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// check compares what was sent with what was received.
func (l *ledger) check() Report {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := Report{Rounds: 1}
	for name, t := range l.tunnels {
		t.check(name, &r)
	}
	for to, ib := range l.inboxes {
		ib.check(to, &r)
	}
	return r
}

func (t *tunnelLog) check(name string, r *Report) {
	ids := map[int]map[string]int{} // seq -> id -> receipts
	last := map[string]store.ID{}   // consumer -> newest id it got
	for _, g := range t.got {
		r.Received++
		if _, ok := t.sent[g.seq]; !ok {
			r.Invented++
			r.problem("%s: received %s (seq %d), which nobody sent", name, g.id, g.seq)
			continue
		}
		if ids[g.seq] == nil {
			ids[g.seq] = map[string]int{}
		}
		ids[g.seq][g.id]++
		id, _ := store.ParseID(g.id)
		if id.Compare(last[g.consumer]) < 0 {
			r.LateReceipts++
		} else {
			last[g.consumer] = id
		}
	}
	var order []int
	for seq, s := range t.sent {
		got := ids[seq]
		n := 0
		for _, c := range got {
			n += c
		}
		switch {
		case len(got) > 1 || s.acked && len(got) == 1 && got[s.id] == 0:
			r.Doubled++
			r.problem("%s: %s stored under ids %v, acknowledged as %q", name, body(name, seq), got, s.id)
		case s.acked && n == 0:
			r.Lost++
			r.problem("%s: %s acknowledged as %s, never received", name, body(name, seq), s.id)
		}
		if n > 1 {
			r.Redelivered += n - 1
		}
		if s.acked {
			r.Produced++
			order = append(order, seq)
		} else {
			r.Unknown++
		}
	}
	slices.Sort(order)
	for i := 1; i < len(order); i++ {
		a, _ := store.ParseID(t.sent[order[i-1]].id)
		b, _ := store.ParseID(t.sent[order[i]].id)
		if a.Compare(b) >= 0 {
			r.Misordered++
			r.problem("%s: seq %d has id %v, not after seq %d's %v", name, order[i], b, order[i-1], a)
		}
	}
}

func (ib *inboxLog) check(to string, r *Report) {
	for key, acked := range ib.sent {
		n := ib.got[key]
		if acked {
			r.MailSent++
		}
		if acked && n == 0 {
			r.MailLost++
			r.problem("inbox of %s: %s acknowledged, never received", to, key)
		}
		if n > 1 {
			r.MailRepeated += n - 1
		}
	}
	for key, n := range ib.got {
		r.MailReceived += n
		if _, ok := ib.sent[key]; !ok {
			r.MailInvented++
			r.problem("inbox of %s: received %s, which nobody sent", to, key)
		}
	}
}
