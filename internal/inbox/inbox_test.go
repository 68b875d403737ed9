package inbox_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/inbox"
	"github.com/postern/postern/internal/node"
	"github.com/postern/postern/internal/servertest"
	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// TestMain shares one private redis-server among the package's tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Main(m)) }

// seedTime is the instant of the seed README's example.
var seedTime = time.Date(2020, 5, 9, 20, 20, 39, 0, time.UTC)

// env is one running node and a client for it.
type env struct {
	t    *testing.T
	spec string
	url  string
	node *servertest.Node // nil for nodes the test assembled itself
	c    *http.Client
}

type resp struct {
	status int
	body   string
	h      http.Header
}

// config is the node config of the suite: the engine of spec, and the
// seed's instant as the clock of sentAt and receivedAt.
func config(spec string, mutate func(*node.Config)) node.Config {
	cfg := servertest.Config()
	cfg.Store = spec
	cfg.Inbox.Now = func() time.Time { return seedTime }
	if mutate != nil {
		mutate(&cfg)
	}
	return cfg
}

// forEachStore runs fn as a subtest per engine (servertest.ForEachEngine),
// on a node configured by mutate.
func forEachStore(t *testing.T, mutate func(*node.Config), fn func(e *env)) {
	servertest.ForEachEngine(t, func(t *testing.T, eng servertest.Engine) {
		fn(startEnv(t, eng.Store, mutate))
	})
}

func startEnv(t *testing.T, spec string, mutate func(*node.Config)) *env {
	n := servertest.Start(t, config(spec, mutate))
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &env{t: t, spec: spec, url: n.URL, node: n, c: &http.Client{Transport: tr}}
}

// do sends a request; hdr is name, value pairs (a name given twice sends
// the header twice).
func (e *env) do(method, path, body string, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	return e.send(req)
}

func (e *env) send(req *http.Request) resp {
	e.t.Helper()
	res, err := e.c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading body: %v", req.Method, req.URL.Path, err)
	}
	return resp{status: res.StatusCode, body: string(b), h: res.Header}
}

// post is a POST to /inbox/<endpoint> as actor from ("" sends no From).
func (e *env) post(endpoint, from, body string, hdr ...string) resp {
	e.t.Helper()
	if from != "" {
		hdr = append([]string{"From", from}, hdr...)
	}
	return e.do("POST", "/inbox/"+endpoint, body, hdr...)
}

// compact returns the compact form of a JSON text written readably.
func compact(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatalf("bad JSON in test: %v: %s", err, s)
	}
	return b.String()
}

// wantJSON checks a 200 JSON answer byte for byte against want (written
// readably).
func (e *env) wantJSON(r resp, want string) {
	e.t.Helper()
	if r.status != 200 || r.body != compact(e.t, want) || r.h.Get("Content-Type") != "application/json" {
		e.t.Fatalf("got %d %s %q\nwant 200 application/json %s", r.status, r.h.Get("Content-Type"), r.body, compact(e.t, want))
	}
	checkCORS(e.t, r)
}

// wantError checks an error answer: status and the exact details, in the
// shape {"error": title, "status": status, "details": [...]}, on one line.
func (e *env) wantError(r resp, status int, title string, details ...string) {
	e.t.Helper()
	want, _ := json.Marshal(map[string]any{"error": title, "status": status, "details": details})
	var got, wantV any
	json.Unmarshal(want, &wantV)
	if err := json.Unmarshal([]byte(r.body), &got); err != nil || r.status != status || !equalJSON(got, wantV) {
		e.t.Fatalf("got %d %s\nwant %d %s", r.status, r.body, status, want)
	}
	if strings.Contains(r.body, "\n") || r.h.Get("Content-Type") != "application/json" {
		e.t.Fatalf("error answer is not one line of JSON: %q %q", r.h.Get("Content-Type"), r.body)
	}
	checkCORS(e.t, r)
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

func checkCORS(t *testing.T, r resp) {
	t.Helper()
	if r.h.Get("Access-Control-Allow-Origin") != "*" || r.h.Get("Access-Control-Expose-Headers") == "" {
		t.Fatalf("%d answer lacks CORS headers: %v", r.status, r.h)
	}
	// Never credentials with "*": browsers refuse the pair, and a grant of
	// credentials to every origin is what a CORS check must never allow.
	if _, ok := r.h["Access-Control-Allow-Credentials"]; ok {
		t.Fatalf("%d answer grants credentials to *: %v", r.status, r.h)
	}
}

// TestSeedConversation replays the seed README's example: the same
// requests in the same order with the same keys, bodies and acks. The
// original returned entries in storage-key order; postern returns them in
// arrival order, so each answer is checked exactly in arrival order and,
// as a set, against the README's answer.
func TestSeedConversation(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		olivia := `{"type": "msg", "idempotencyKey": "000000000000", "origin": "olivia",
			"body": "Hey there, are you ok?", "expectsAck": true, "sentAt": "2020-05-09T20:20:39Z"}`
		maurice := `{"type": "msg", "idempotencyKey": "111111111111", "origin": "maurice",
			"body": {"message": "Yep fine check this loremipsum", "lorem": "ipsum"}, "expectsAck": false,
			"sentAt": "2020-05-09T20:20:39Z"}`
		ackMaurice := `{"type": "ack", "idempotencyKey": "000000000000", "destination": "maurice", "receivedAt": "2020-05-09T20:20:39Z"}`
		ackGeorge := `{"type": "ack", "idempotencyKey": "000000000000", "destination": "george", "receivedAt": "2020-05-09T20:20:39Z"}`

		// Olivia sends a message to Maurice and George expecting an ACK from both.
		r := e.post("exchange", "olivia", `{
  "idempotencyKey": "000000000000",
  "destination": ["maurice", "george"],
  "body": "Hey there, are you ok?",
  "expectsAck": true
}`)
		e.wantJSON(r, `[]`)

		// Maurice sends a message to Olivia and George.
		r = e.post("exchange", "maurice", `{
  "idempotencyKey": "111111111111",
  "destination": ["olivia", "george"],
  "body": {"message": "Yep fine check this loremipsum", "lorem": "ipsum"}
}`)
		e.wantJSON(r, `[`+olivia+`]`)

		// George checks his messages (README order: maurice's, then olivia's).
		r = e.post("receive", "george", "")
		e.wantJSON(r, `[`+olivia+`,`+maurice+`]`)
		sameSet(t, r.body, `[`+maurice+`,`+olivia+`]`)

		// George checks his messages again.
		e.wantJSON(e.post("receive", "george", ""), `[]`)

		// Olivia checks her messages (README order: ack maurice, msg, ack george).
		r = e.post("receive", "olivia", "")
		e.wantJSON(r, `[`+maurice+`,`+ackMaurice+`,`+ackGeorge+`]`)
		sameSet(t, r.body, `[`+ackMaurice+`,`+maurice+`,`+ackGeorge+`]`)

		// Everyone's inbox is empty now.
		for _, who := range []string{"olivia", "maurice", "george"} {
			e.wantJSON(e.post("receive", who, ""), `[]`)
		}
	})
}

// sameSet checks that two JSON arrays hold the same entries in any order.
func sameSet(t *testing.T, got, want string) {
	t.Helper()
	norm := func(s string) []string {
		var items []json.RawMessage
		if err := json.Unmarshal([]byte(s), &items); err != nil {
			t.Fatalf("not a JSON array: %s", s)
		}
		var out []string
		for _, it := range items {
			var b bytes.Buffer
			json.Compact(&b, it)
			out = append(out, b.String())
		}
		sort.Strings(out)
		return out
	}
	if g, w := norm(got), norm(want); !slices.Equal(g, w) {
		t.Fatalf("entries differ from the README's:\n got %v\nwant %v", g, w)
	}
}

func TestSendCountsDestinations(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		e.wantJSON(e.post("send", "a", `{"idempotencyKey":"abcdefghijkl","destination":["b","c","b"],"body":1}`), `{"sent":3}`)
		e.wantJSON(e.post("send", "a", `{"idempotencyKey":"abcdefghijkm","destination":[],"body":1}`), `{"sent":0}`)
		// b named twice gets one copy: the second replaced the first.
		e.wantJSON(e.post("receive", "b", ""), `[{"type":"msg","idempotencyKey":"abcdefghijkl","origin":"a","body":1,"expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`)
		e.wantJSON(e.post("receive", "c", ""), `[{"type":"msg","idempotencyKey":"abcdefghijkl","origin":"a","body":1,"expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`)
		// The receive body is ignored, whatever it is.
		e.wantJSON(e.post("receive", "c", "not json at all"), `[]`)
	})
}

func TestBodiesOfAnyJSONType(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		bodies := []struct{ in, out string }{
			{`"text"`, `"text"`},
			{`42`, `42`},
			{`-1.5e300`, `-1.5e300`},
			{`123456789012345678901234567890`, `123456789012345678901234567890`}, // exact, not a float
			{`true`, `true`},
			{`false`, `false`},
			{`null`, `null`},
			{`[1, "two", [3], {"four": 4}]`, `[1,"two",[3],{"four":4}]`},
			{` { "nested" : { "deep" : [ null ] } } `, `{"nested":{"deep":[null]}}`},
			{`"\u00e9\ud83d\ude00 \" \\ \n"`, `"\u00e9\ud83d\ude00 \" \\ \n"`}, // escapes kept as written
			{`"é😀 </script>"`, `"é😀 </script>"`},
			{`{}`, `{}`},
			{`[]`, `[]`},
		}
		for i, b := range bodies {
			key := fmt.Sprintf("body-key-%04d", i)
			e.wantJSON(e.post("send", "o", `{"idempotencyKey":"`+key+`","destination":["d"],"body":`+b.in+`}`), `{"sent":1}`)
			want := `[{"type":"msg","idempotencyKey":"` + key + `","origin":"o","body":` + b.out + `,"expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`
			e.wantJSON(e.post("receive", "d", ""), want)
		}
	})
}

func TestActorNames(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		// Any non-empty UTF-8 string is an actor: with slashes, spaces,
		// quotes, non-ASCII; names are case-sensitive and independent.
		names := []string{"olivia@example.com", "a/b", "a", "A", "with space", `qu"ote`, "é 😀", "x:y:z", "*"}
		for i, n := range names {
			dests, _ := json.Marshal([]string{n})
			key := fmt.Sprintf("actor-key-%04d", i)
			e.wantJSON(e.post("send", "sender/1", `{"idempotencyKey":"`+key+`","destination":`+string(dests)+`,"body":"to `+strings.ReplaceAll(n, `"`, `\"`)+`"}`), `{"sent":1}`)
		}
		for i, n := range names {
			r := e.post("receive", n, "")
			var got []map[string]any
			if err := json.Unmarshal([]byte(r.body), &got); err != nil || len(got) != 1 {
				t.Fatalf("receive as %q: %d %s", n, r.status, r.body)
			}
			if got[0]["origin"] != "sender/1" || got[0]["body"] != "to "+n || got[0]["idempotencyKey"] != fmt.Sprintf("actor-key-%04d", i) {
				t.Fatalf("receive as %q got %v", n, got[0])
			}
		}
	})
}

func TestSeveralFromHeadersLastWins(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		r := e.do("POST", "/inbox/send", `{"idempotencyKey":"from-headers","destination":["d"],"body":0}`, "From", "first", "From", "second")
		e.wantJSON(r, `{"sent":1}`)
		e.wantJSON(e.post("receive", "d", ""), `[{"type":"msg","idempotencyKey":"from-headers","origin":"second","body":0,"expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`)
		e.wantJSON(e.do("POST", "/inbox/receive", "", "From", "d", "From", "nobody"), `[]`)
	})
}

func TestBadInput(t *testing.T) {
	long := strings.Repeat("k", 65)
	ok := `"idempotencyKey":"good-key-0001","destination":["d"],"body":1`
	cases := []struct {
		name, from, body string
		details          []string
	}{
		{"no From", "", `{` + ok + `}`, []string{"missing 'From' header"}},
		{"empty body", "a", ``, []string{"invalid enveloped message (invalid JSON)"}},
		{"truncated", "a", `{"idempotencyKey":`, []string{"invalid enveloped message (invalid JSON)"}},
		{"trailing garbage", "a", `{` + ok + `} x`, []string{"invalid enveloped message (invalid JSON)"}},
		{"two documents", "a", `{` + ok + `}{}`, []string{"invalid enveloped message (invalid JSON)"}},
		{"single quotes", "a", `{'body': 1}`, []string{"invalid enveloped message (invalid JSON)"}},
		{"not UTF-8", "a", "{\"idempotencyKey\":\"good-key-0001\",\"destination\":[\"d\"],\"body\":\"\xff\"}", []string{"invalid enveloped message (invalid JSON)"}},
		{"array", "a", `[]`, []string{"invalid enveloped message (not a JSON object)"}},
		{"string", "a", `"x"`, []string{"invalid enveloped message (not a JSON object)"}},
		{"number", "a", `12`, []string{"invalid enveloped message (not a JSON object)"}},
		{"null", "a", `null`, []string{"invalid enveloped message (not a JSON object)"}},
		{"missing everything", "a", `{}`, []string{"field 'idempotencyKey' not found", "field 'destination' not found", "field 'body' not found"}},
		{"key short", "a", `{"idempotencyKey":"12345678901","destination":["d"],"body":1}`, []string{"idempotency key is too short"}},
		{"key long", "a", `{"idempotencyKey":"` + long + `","destination":["d"],"body":1}`, []string{"idempotency key is too long"}},
		{"key chars", "a", `{"idempotencyKey":"abc+def/ghi=","destination":["d"],"body":1}`, []string{"idempotency key has invalid characters"}},
		{"key space", "a", `{"idempotencyKey":"abcdef ghijkl","destination":["d"],"body":1}`, []string{"idempotency key has invalid characters"}},
		{"key non-ASCII", "a", `{"idempotencyKey":"ééééééé","destination":["d"],"body":1}`, []string{"idempotency key has invalid characters"}},
		{"key number", "a", `{"idempotencyKey":123456789012,"destination":["d"],"body":1}`, []string{"invalid 'idempotencyKey' field: not a string literal"}},
		{"key null", "a", `{"idempotencyKey":null,"destination":["d"],"body":1}`, []string{"invalid 'idempotencyKey' field: not a string literal"}},
		{"destination string", "a", `{"idempotencyKey":"good-key-0001","destination":"d","body":1}`, []string{"invalid 'destination' field: it is not a list"}},
		{"destination object", "a", `{"idempotencyKey":"good-key-0001","destination":{"0":"d"},"body":1}`, []string{"invalid 'destination' field: it is not a list"}},
		{"destination null", "a", `{"idempotencyKey":"good-key-0001","destination":null,"body":1}`, []string{"invalid 'destination' field: it is not a list"}},
		{"destination elements", "a", `{"idempotencyKey":"good-key-0001","destination":["d",2,null,["e"],""],"body":1}`, []string{
			"invalid 'destination' field: element #1 is not a string literal",
			"invalid 'destination' field: element #2 is not a string literal",
			"invalid 'destination' field: element #3 is not a string literal",
			"empty raw string for actor type",
		}},
		{"expectsAck string", "a", `{` + ok + `,"expectsAck":"true"}`, []string{"invalid 'expectsAck' field: it is not a boolean value"}},
		{"expectsAck number", "a", `{` + ok + `,"expectsAck":1}`, []string{"invalid 'expectsAck' field: it is not a boolean value"}},
		{"expectsAck null", "a", `{` + ok + `,"expectsAck":null}`, []string{"invalid 'expectsAck' field: it is not a boolean value"}},
		{"every field wrong", "", `{"idempotencyKey":"short","destination":[1],"expectsAck":"no"}`, []string{
			"missing 'From' header",
			"idempotency key is too short",
			"invalid 'destination' field: element #0 is not a string literal",
			"field 'body' not found",
			"invalid 'expectsAck' field: it is not a boolean value",
		}},
	}
	forEachStore(t, nil, func(e *env) {
		for _, c := range cases {
			for _, endpoint := range []string{"send", "exchange"} {
				t.Run(c.name+"/"+endpoint, func(t *testing.T) {
					e := *e
					e.t = t
					e.wantError(e.post(endpoint, c.from, c.body), 400, "Bad request", c.details...)
				})
			}
		}
		// Empty From, and the receive route's identity checks.
		for _, endpoint := range []string{"send", "receive", "exchange"} {
			e.wantError(e.post(endpoint, "", `{`+ok+`}`, "From", ""), 400, "Bad request", "empty raw string for actor type")
		}
		e.wantError(e.post("receive", "", ""), 400, "Bad request", "missing 'From' header")
		e.wantError(e.post("receive", strings.Repeat("n", inbox.DefaultMaxActorBytes+1), ""), 400, "Bad request",
			fmt.Sprintf("'From' header is longer than %d bytes", inbox.DefaultMaxActorBytes))
		e.wantError(e.post("receive", "caf\xe9", ""), 400, "Bad request", "'From' header is not valid UTF-8")
		// Unknown fields are ignored; a null body counts as present.
		e.wantJSON(e.post("send", "a", `{`+ok+`,"extra":{"x":1},"expectsAck":false}`), `{"sent":1}`)
		e.wantJSON(e.post("send", "a", `{"idempotencyKey":"good-key-0002","destination":["d"],"body":null}`), `{"sent":1}`)
		// Nothing of the refused requests was stored.
		r := e.post("receive", "d", "")
		var got []map[string]any
		json.Unmarshal([]byte(r.body), &got)
		if len(got) != 2 || got[0]["idempotencyKey"] != "good-key-0001" || got[1]["idempotencyKey"] != "good-key-0002" || got[1]["body"] != nil {
			t.Fatalf("stored after refusals: %s", r.body)
		}
	})
}

func TestLimits(t *testing.T) {
	forEachStore(t, func(c *node.Config) {
		c.Inbox.MaxDestinations = 3
		c.Inbox.MaxActorBytes = 8
		c.Inbox.MaxBodyBytes = 200
	}, func(e *env) {
		e.wantError(e.post("send", "a", `{"idempotencyKey":"good-key-0001","destination":["b","c","d","e"],"body":1}`), 400, "Bad request",
			"invalid 'destination' field: 4 destinations, at most 3 allowed")
		e.wantError(e.post("send", "a", `{"idempotencyKey":"good-key-0001","destination":["b","123456789"],"body":1}`), 400, "Bad request",
			"invalid 'destination' field: element #1 is longer than 8 bytes")
		e.wantJSON(e.post("send", "a", `{"idempotencyKey":"good-key-0001","destination":["b","c","12345678"],"body":1}`), `{"sent":3}`)

		// Oversize bodies: 413, whether announced by Content-Length or not.
		big := `{"idempotencyKey":"good-key-0002","destination":["b"],"body":"` + strings.Repeat("x", 200) + `"}`
		for _, endpoint := range []string{"send", "exchange", "receive"} {
			e.wantError(e.post(endpoint, "a", big), 413, "Payload too large", "request body is larger than 200 bytes")
		}
		e.wantError(e.post("send", "", big), 413, "Payload too large", "request body is larger than 200 bytes")
		req, _ := http.NewRequest("POST", e.url+"/inbox/send", io.MultiReader(strings.NewReader(big[:150]), strings.NewReader(big[150:])))
		req.ContentLength = -1
		req.Header.Set("From", "a")
		e.wantError(e.send(req), 413, "Payload too large", "request body is larger than 200 bytes")
		// Exactly at the limit is fine.
		exact := `{"idempotencyKey":"good-key-0003","destination":["b"],"body":"`
		exact += strings.Repeat("y", 200-len(exact)-2) + `"}`
		e.wantJSON(e.post("send", "a", exact), `{"sent":1}`)
		r := e.post("receive", "b", "")
		if r.status != 200 || strings.Count(r.body, `"type":"msg"`) != 2 || strings.Contains(r.body, "good-key-0002") {
			t.Fatalf("receive after limits: %d %s", r.status, r.body)
		}
	})
}

func TestSlowBodyTimesOut(t *testing.T) {
	forEachStore(t, func(c *node.Config) { c.Inbox.BodyReadTimeout = 200 * time.Millisecond }, func(e *env) {
		conn, err := net.Dial("tcp", e.node.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Announce 100 bytes, send a few, then nothing.
		fmt.Fprintf(conn, "POST /inbox/send HTTP/1.1\r\nHost: x\r\nFrom: a\r\nContent-Length: 100\r\n\r\n{\"body\":")
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		e.wantError(resp{status: res.StatusCode, body: string(body), h: res.Header}, 408, "Request timeout", "request body not received in time")
		e.wantJSON(e.post("receive", "a", ""), `[]`)
	})
}

func TestReceiveCapAndRemaining(t *testing.T) {
	forEachStore(t, func(c *node.Config) { c.Inbox.MaxReceive = 3 }, func(e *env) {
		for i := range 7 {
			e.wantJSON(e.post("send", "a", fmt.Sprintf(`{"idempotencyKey":"cap-key-%05d","destination":["b"],"body":%d}`, i, i)), `{"sent":1}`)
		}
		var got []int
		for _, want := range []struct {
			n         int
			remaining string
		}{{3, "4"}, {3, "1"}, {1, ""}, {0, ""}} {
			r := e.post("receive", "b", "")
			var batch []struct{ Body int }
			if err := json.Unmarshal([]byte(r.body), &batch); err != nil || len(batch) != want.n || r.h.Get(inbox.RemainingHeader) != want.remaining {
				t.Fatalf("receive: %d %s %s=%q; want %d entries, remaining %q", r.status, r.body, inbox.RemainingHeader, r.h.Get(inbox.RemainingHeader), want.n, want.remaining)
			}
			for _, m := range batch {
				got = append(got, m.Body)
			}
		}
		if !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6}) {
			t.Fatalf("received %v, want 0..6 in order", got)
		}
		// Exchange obeys the same cap.
		for i := range 4 {
			e.post("send", "a", fmt.Sprintf(`{"idempotencyKey":"cap-key-x%04d","destination":["b"],"body":%d}`, i, i))
		}
		r := e.post("exchange", "b", `{"idempotencyKey":"cap-key-reply","destination":[],"body":null}`)
		if strings.Count(r.body, `"type"`) != 3 || r.h.Get(inbox.RemainingHeader) != "1" {
			t.Fatalf("exchange: %s remaining %q", r.body, r.h.Get(inbox.RemainingHeader))
		}
	})
}

func TestFullInbox(t *testing.T) {
	forEachStore(t, func(c *node.Config) { c.Inbox.MaxLen = 2 }, func(e *env) {
		send := func(key string, dests ...string) resp {
			d, _ := json.Marshal(dests)
			return e.post("send", "a", `{"idempotencyKey":"`+key+`","destination":`+string(d)+`,"body":"`+key+`"}`)
		}
		e.wantJSON(send("full-key-0001", "b"), `{"sent":1}`)
		e.wantJSON(send("full-key-0002", "b"), `{"sent":1}`)
		// b is full; c still gets its copy.
		e.wantError(send("full-key-0003", "b", "c"), 507, "Insufficient storage", `inbox of "b" is full (2 entries)`)
		// Replacing an unread copy is not a new entry: allowed when full.
		e.wantJSON(send("full-key-0002", "b"), `{"sent":1}`)
		r := e.post("receive", "b", "")
		if strings.Count(r.body, `"type"`) != 2 || strings.Contains(r.body, "full-key-0003") {
			t.Fatalf("b: %s", r.body)
		}
		// Retrying after b read its inbox stores b's copy, and c's copy is
		// replaced, not duplicated.
		e.wantJSON(send("full-key-0003", "b", "c"), `{"sent":2}`)
		for _, who := range []string{"b", "c"} {
			e.wantJSON(e.post("receive", who, ""), `[{"type":"msg","idempotencyKey":"full-key-0003","origin":"a","body":"full-key-0003","expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`)
		}
		// An ack for a full inbox is dropped (and counted); the receive
		// that produced it succeeds.
		e.wantJSON(e.post("send", "a", `{"idempotencyKey":"full-key-0004","destination":["b"],"body":0,"expectsAck":true}`), `{"sent":1}`)
		e.wantJSON(send("full-key-0005", "a"), `{"sent":1}`)
		e.wantJSON(send("full-key-0006", "a"), `{"sent":1}`)
		e.wantJSON(e.post("receive", "b", ""), `[{"type":"msg","idempotencyKey":"full-key-0004","origin":"a","body":0,"expectsAck":true,"sentAt":"2020-05-09T20:20:39Z"}]`)
		r = e.post("receive", "a", "")
		if strings.Count(r.body, `"type"`) != 2 || strings.Contains(r.body, `"type":"ack"`) {
			t.Fatalf("a: %s", r.body)
		}
		if m := e.do("GET", "/metrics", "").body; !strings.Contains(m, "postern_inbox_acks_dropped_total 1\n") {
			t.Fatal("dropped ack not counted")
		}
	})
}

func TestIdempotency(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		// Unread: a resend replaces the copy (one entry, the newest body).
		e.post("send", "a", `{"idempotencyKey":"idem-key-0001","destination":["b"],"body":"v1"}`)
		e.post("send", "a", `{"idempotencyKey":"idem-key-0002","destination":["b"],"body":"other"}`)
		e.wantJSON(e.post("send", "a", `{"idempotencyKey":"idem-key-0001","destination":["b"],"body":"v2","expectsAck":true}`), `{"sent":1}`)
		e.wantJSON(e.post("receive", "b", ""), `[
			{"type":"msg","idempotencyKey":"idem-key-0001","origin":"a","body":"v2","expectsAck":true,"sentAt":"2020-05-09T20:20:39Z"},
			{"type":"msg","idempotencyKey":"idem-key-0002","origin":"a","body":"other","expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`)
		// Read: a resend within the expiration is not delivered again, and
		// produces no second ack.
		e.wantJSON(e.post("send", "a", `{"idempotencyKey":"idem-key-0001","destination":["b","c"],"body":"v3","expectsAck":true}`), `{"sent":2}`)
		e.wantJSON(e.post("receive", "b", ""), `[]`)
		e.wantJSON(e.post("receive", "c", ""), `[{"type":"msg","idempotencyKey":"idem-key-0001","origin":"a","body":"v3","expectsAck":true,"sentAt":"2020-05-09T20:20:39Z"}]`)
		e.wantJSON(e.post("receive", "a", ""), `[
			{"type":"ack","idempotencyKey":"idem-key-0001","destination":"b","receivedAt":"2020-05-09T20:20:39Z"},
			{"type":"ack","idempotencyKey":"idem-key-0001","destination":"c","receivedAt":"2020-05-09T20:20:39Z"}]`)
		// The same key from another origin is another message.
		e.post("send", "a", `{"idempotencyKey":"idem-key-0003","destination":["b"],"body":"from a"}`)
		e.post("send", "z", `{"idempotencyKey":"idem-key-0003","destination":["b"],"body":"from z"}`)
		r := e.post("receive", "b", "")
		if !strings.Contains(r.body, `"from a"`) || !strings.Contains(r.body, `"from z"`) {
			t.Fatalf("same key, two origins: %s", r.body)
		}
		// Exchange to oneself: stored first, so returned at once.
		e.wantJSON(e.post("exchange", "self", `{"idempotencyKey":"idem-key-0004","destination":["self"],"body":"me","expectsAck":true}`),
			`[{"type":"msg","idempotencyKey":"idem-key-0004","origin":"self","body":"me","expectsAck":true,"sentAt":"2020-05-09T20:20:39Z"}]`)
		e.wantJSON(e.post("receive", "self", ""), `[{"type":"ack","idempotencyKey":"idem-key-0004","destination":"self","receivedAt":"2020-05-09T20:20:39Z"}]`)
	})
}

// TestConcurrentReceivesDeliverOnce runs senders and receivers of one
// inbox at once: every message is returned by exactly one receive.
func TestConcurrentReceivesDeliverOnce(t *testing.T) {
	forEachStore(t, func(c *node.Config) { c.Inbox.MaxReceive = 7 }, func(e *env) {
		const senders, each, receivers = 4, 40, 4
		total := senders * each
		var mu sync.Mutex
		seen := map[string]int{}
		acks := 0
		done := make(chan struct{})
		var wg sync.WaitGroup
		for s := range senders {
			wg.Go(func() {
				for i := range each {
					body := fmt.Sprintf(`{"idempotencyKey":"conc-%02d-%05d","destination":["shared"],"body":"%d-%d","expectsAck":true}`, s, i, s, i)
					if r := e.post("send", fmt.Sprintf("sender%d", s), body); r.status != 200 {
						t.Errorf("send: %d %s", r.status, r.body)
						return
					}
				}
			})
		}
		for range receivers {
			wg.Go(func() {
				for {
					select {
					case <-done:
						return
					default:
					}
					r := e.post("receive", "shared", "")
					var batch []struct {
						Type, IdempotencyKey string
					}
					if err := json.Unmarshal([]byte(r.body), &batch); r.status != 200 || err != nil {
						t.Errorf("receive: %d %s", r.status, r.body)
						return
					}
					mu.Lock()
					for _, m := range batch {
						seen[m.IdempotencyKey]++
					}
					if len(seen) == total {
						select {
						case <-done:
						default:
							close(done)
						}
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(seen) != total {
			t.Fatalf("%d distinct messages received, want %d", len(seen), total)
		}
		for k, n := range seen {
			if n != 1 {
				t.Fatalf("%s delivered %d times", k, n)
			}
		}
		// One ack per message, in each sender's inbox.
		for s := range senders {
			for {
				r := e.post("receive", fmt.Sprintf("sender%d", s), "")
				n := strings.Count(r.body, `"type":"ack"`)
				if n == 0 {
					break
				}
				acks += n
			}
		}
		if acks != total {
			t.Fatalf("%d acks, want %d", acks, total)
		}
	})
}

func TestTokenBoundIdentities(t *testing.T) {
	policy, err := auth.Parse([]byte(`
[[token]]
name = "olivia"
secret = "olivia-secret-000001"
[[token.grant]]
actions = ["read", "write"]
paths = ["/inbox/olivia"]

[[token]]
name = "george-reader"
secret = "george-reader-000001"
[[token.grant]]
actions = ["read"]
paths = ["/inbox/george"]

[[token]]
name = "bots"
secret = "bots-secret-00000001"
[[token.grant]]
actions = ["write"]
paths = ["/inbox/bot-*"]

[[anonymous.grant]]
actions = ["read", "write"]
paths = ["/inbox/public"]
`))
	if err != nil {
		t.Fatal(err)
	}
	forEachStore(t, func(c *node.Config) { c.Policy = policy }, func(e *env) {
		olivia := []string{"Authorization", "Bearer olivia-secret-000001"}
		george := []string{"Authorization", "Bearer george-reader-000001"}
		bots := []string{"Authorization", "Bearer bots-secret-00000001"}
		env := func(key string) string {
			return `{"idempotencyKey":"` + key + `","destination":["george","olivia"],"body":"x"}`
		}
		e.wantJSON(e.post("send", "olivia", env("auth-key-0001"), olivia...), `{"sent":2}`)
		// Without a token, with the wrong one, or as someone else: 403.
		e.wantError(e.post("send", "olivia", env("auth-key-0002")), 403, "Forbidden",
			`no token was given: to send as "olivia", a token granted write on /inbox/olivia is needed`)
		e.wantError(e.post("send", "olivia", env("auth-key-0002"), "Authorization", "Bearer nobody-secret-00001"), 403, "Forbidden",
			`this token may not send as "olivia" (it needs write on /inbox/olivia)`)
		e.wantError(e.post("send", "george", env("auth-key-0002"), olivia...), 403, "Forbidden",
			`this token may not send as "george" (it needs write on /inbox/george)`)
		e.wantError(e.post("receive", "george", "", olivia...), 403, "Forbidden",
			`this token may not receive for "george" (it needs read on /inbox/george)`)
		// Read only: george's token receives but cannot send or exchange.
		e.wantError(e.post("send", "george", env("auth-key-0003"), george...), 403, "Forbidden",
			`this token may not send as "george" (it needs write on /inbox/george)`)
		e.wantError(e.post("exchange", "george", env("auth-key-0003"), george...), 403, "Forbidden",
			`this token may not send as "george" (it needs write on /inbox/george)`)
		r := e.post("receive", "george", "", george...)
		if r.status != 200 || !strings.Contains(r.body, "auth-key-0001") {
			t.Fatalf("george receive: %d %s", r.status, r.body)
		}
		// Write only, by prefix: bots send, cannot receive or exchange.
		e.wantJSON(e.post("send", "bot-7", env("auth-key-0004"), bots...), `{"sent":2}`)
		e.wantError(e.post("receive", "bot-7", "", bots...), 403, "Forbidden",
			`this token may not receive for "bot-7" (it needs read on /inbox/bot-7)`)
		e.wantError(e.post("exchange", "bot-7", env("auth-key-0005"), bots...), 403, "Forbidden",
			`this token may not receive for "bot-7" (it needs read on /inbox/bot-7)`)
		// Both: exchange works.
		r = e.post("exchange", "olivia", env("auth-key-0006"), olivia...)
		if r.status != 200 || !strings.Contains(r.body, "auth-key-0001") || !strings.Contains(r.body, "auth-key-0004") || !strings.Contains(r.body, "auth-key-0006") {
			t.Fatalf("olivia exchange: %d %s", r.status, r.body)
		}
		// Anonymous grants of the policy hold.
		e.wantJSON(e.post("exchange", "public", `{"idempotencyKey":"auth-key-0007","destination":["public"],"body":1}`),
			`[{"type":"msg","idempotencyKey":"auth-key-0007","origin":"public","body":1,"expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`)
		// Identity problems come before auth: 400, not 403.
		e.wantError(e.post("send", "", env("auth-key-0008")), 400, "Bad request", "missing 'From' header")
		// Nothing was stored by refused requests: george has only what
		// olivia's exchange and the bots sent since.
		r = e.post("receive", "george", "", george...)
		if strings.Count(r.body, `"type"`) != 2 || strings.Contains(r.body, "auth-key-0002") || strings.Contains(r.body, "auth-key-0003") || strings.Contains(r.body, "auth-key-0005") {
			t.Fatalf("george after refusals: %s", r.body)
		}
	})
}

func TestRoutingCORSAndVersion(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		for _, p := range []string{"/inbox", "/inbox/"} {
			r := e.do("GET", p, "")
			var v struct{ Version, SHA1, Build string }
			if r.status != 200 || r.h.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(r.body), &v) != nil || v.Version == "" || v.Build == "" {
				t.Fatalf("GET %s: %d %s", p, r.status, r.body)
			}
			if !strings.Contains(r.body, `"sha1":`) {
				t.Fatalf("version info lacks sha1: %s", r.body)
			}
			checkCORS(t, r)
		}
		// Trailing slashes are fine.
		e.wantJSON(e.post("receive/", "x", ""), `[]`)
		e.wantJSON(e.post("send/", "x", `{"idempotencyKey":"route-key-001","destination":[],"body":1}`), `{"sent":0}`)
		e.wantJSON(e.post("exchange/", "x", `{"idempotencyKey":"route-key-001","destination":[],"body":1}`), `[]`)

		for _, p := range []string{"/inbox/nothing", "/inbox/send/x", "/inbox//send", "/inbox/Send", "/inbox/receive//"} {
			for _, m := range []string{"GET", "POST", "OPTIONS"} {
				e.wantError(e.do(m, p, "", "From", "x"), 404, "Not found", "no such inbox endpoint: use /send, /receive or /exchange")
			}
		}
		for _, c := range []struct{ method, path, allow string }{
			{"GET", "/inbox/send", "POST, OPTIONS"},
			{"PUT", "/inbox/receive", "POST, OPTIONS"},
			{"DELETE", "/inbox/exchange", "POST, OPTIONS"},
			{"HEAD", "/inbox/send", "POST, OPTIONS"},
			{"POST", "/inbox/", "GET, HEAD, OPTIONS"},
			{"PATCH", "/inbox", "GET, HEAD, OPTIONS"},
		} {
			r := e.do(c.method, c.path, "", "From", "x")
			if r.h.Get("Allow") != c.allow {
				t.Fatalf("%s %s: Allow %q, want %q", c.method, c.path, r.h.Get("Allow"), c.allow)
			}
			if c.method == "HEAD" {
				if r.status != 405 || r.body != "" {
					t.Fatalf("HEAD: %d %q", r.status, r.body)
				}
				continue
			}
			e.wantError(r, 405, "Method not allowed", "method not allowed: use "+c.allow)
		}
		for _, c := range []struct{ path, allow string }{
			{"/inbox/send", "POST, OPTIONS"}, {"/inbox/receive", "POST, OPTIONS"}, {"/inbox/exchange/", "POST, OPTIONS"}, {"/inbox/", "GET, HEAD, OPTIONS"},
		} {
			r := e.do("OPTIONS", c.path, "", "Origin", "http://example.test", "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "from, content-type")
			if r.status != 204 || r.body != "" || r.h.Get("Allow") != c.allow || r.h.Get("Access-Control-Allow-Methods") != c.allow {
				t.Fatalf("OPTIONS %s: %d %q %v", c.path, r.status, r.body, r.h)
			}
			if !strings.Contains(r.h.Get("Access-Control-Allow-Headers"), "From") {
				t.Fatalf("preflight does not allow From: %v", r.h)
			}
			checkCORS(t, r)
		}
		// Other front doors are untouched.
		if r := e.do("GET", "/inboxes", ""); r.status != 404 {
			t.Fatalf("/inboxes: %d", r.status)
		}
		if r := e.do("GET", "/t/x", ""); r.status != 204 {
			t.Fatalf("/t/x: %d", r.status)
		}
	})
}

func TestMetrics(t *testing.T) {
	forEachStore(t, nil, func(e *env) {
		e.post("send", "a", `{"idempotencyKey":"metric-key-1","destination":["b","c"],"body":1,"expectsAck":true}`)
		e.post("send", "a", `{"idempotencyKey":"metric-key-1","destination":["b"],"body":2,"expectsAck":true}`) // replaces
		e.post("receive", "b", "")
		e.post("send", "a", `{"idempotencyKey":"metric-key-1","destination":["b"],"body":3}`) // suppressed
		e.post("receive", "a", "")
		e.post("send", "a", `{}`)
		metrics := e.do("GET", "/metrics", "").body
		for _, want := range []string{
			`postern_inbox_sent_total 2`,
			`postern_inbox_duplicates_total 2`,
			`postern_inbox_acks_total 1`,
			`postern_inbox_received_total{type="msg"} 1`,
			`postern_inbox_received_total{type="ack"} 1`,
			`postern_queue_appended_total{kind="inbox"} 3`,
			`postern_queue_delivered_total{kind="inbox"} 2`,
			`postern_http_requests_total{code="200",route="inbox.send"} 3`,
			`postern_http_requests_total{code="400",route="inbox.send"} 1`,
			`postern_http_requests_total{code="200",route="inbox.receive"} 2`,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})
}

// TestRestartKeepsEverything runs on the engines that outlive a node: what
// was sent before a restart is received once after it, acks included, and
// idempotency keys are still remembered.
func TestRestartKeepsEverything(t *testing.T) {
	servertest.ForEachEngine(t, func(t *testing.T, eng servertest.Engine) {
		if !eng.Durable() {
			t.Skip("the memory engine keeps nothing across a restart")
		}
		first := startEnv(t, eng.Store, nil)
		first.wantJSON(first.post("send", "a", `{"idempotencyKey":"restart-key1","destination":["b","c"],"body":"one","expectsAck":true}`), `{"sent":2}`)
		first.wantJSON(first.post("send", "a", `{"idempotencyKey":"restart-key2","destination":["b"],"body":"two"}`), `{"sent":1}`)
		first.wantJSON(first.post("receive", "c", ""), `[{"type":"msg","idempotencyKey":"restart-key1","origin":"a","body":"one","expectsAck":true,"sentAt":"2020-05-09T20:20:39Z"}]`)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := first.node.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}

		second := startEnv(t, eng.Store, nil)
		// Resends are still recognized: c's copy was read, b's is replaced.
		second.wantJSON(second.post("send", "a", `{"idempotencyKey":"restart-key1","destination":["b","c"],"body":"one","expectsAck":true}`), `{"sent":2}`)
		second.wantJSON(second.post("receive", "b", ""), `[
			{"type":"msg","idempotencyKey":"restart-key1","origin":"a","body":"one","expectsAck":true,"sentAt":"2020-05-09T20:20:39Z"},
			{"type":"msg","idempotencyKey":"restart-key2","origin":"a","body":"two","expectsAck":false,"sentAt":"2020-05-09T20:20:39Z"}]`)
		second.wantJSON(second.post("receive", "c", ""), `[]`)
		second.wantJSON(second.post("receive", "a", ""), `[
			{"type":"ack","idempotencyKey":"restart-key1","destination":"c","receivedAt":"2020-05-09T20:20:39Z"},
			{"type":"ack","idempotencyKey":"restart-key1","destination":"b","receivedAt":"2020-05-09T20:20:39Z"}]`)
	})
}

// TestIdempotencyKeysBoundedPerInbox: an inbox remembers the idempotency
// keys of the messages it delivered for the whole expiration, but at most
// MaxKeys of them (the engine's DedupMax): a sender with fresh keys for
// every message could otherwise make postern remember without bound for a
// week. The newest keys keep suppressing resends; the oldest are forgotten,
// so such a message is delivered again.
func TestIdempotencyKeysBoundedPerInbox(t *testing.T) {
	const keys, max = 40, 16
	forEachStore(t, func(c *node.Config) { c.Inbox.MaxKeys = max }, func(e *env) {
		key := func(i int) string { return fmt.Sprintf("bounded-key-%04d", i) }
		for i := range keys {
			e.wantJSON(e.post("send", "a", `{"idempotencyKey":"`+key(i)+`","destination":["b"],"body":"v"}`), `{"sent":1}`)
			if r := e.post("receive", "b", ""); !strings.Contains(r.body, key(i)) {
				t.Fatalf("message %d not delivered: %s", i, r.body)
			}
		}
		// The newest key is remembered: not delivered again.
		e.post("send", "a", `{"idempotencyKey":"`+key(keys-1)+`","destination":["b"],"body":"again"}`)
		e.wantJSON(e.post("receive", "b", ""), `[]`)
		// The oldest is forgotten: delivered again.
		e.post("send", "a", `{"idempotencyKey":"`+key(0)+`","destination":["b"],"body":"again"}`)
		if r := e.post("receive", "b", ""); !strings.Contains(r.body, `"again"`) {
			t.Fatalf("a resend with the oldest key: %s", r.body)
		}
	})
}
