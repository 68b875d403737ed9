package inbox

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var keyRE = regexp.MustCompile(`^[A-Za-z0-9\-_=]{12,64}$`)

func TestKeyMatchesThePattern(t *testing.T) {
	for _, k := range []string{"", "a", "000000000000", "111111111111", strings.Repeat("z", 64), strings.Repeat("z", 65),
		"abc-def_ghi=", "abc+def/ghi=", "ééééééé", "abcdefghijk\n", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="} {
		if got, want := ValidKey(k), keyRE.MatchString(k); got != want {
			t.Errorf("ValidKey(%q) = %v, the pattern says %v", k, got, want)
		}
	}
}

func TestParseEnvelope(t *testing.T) {
	lim := limits{maxDestinations: DefaultMaxDestinations, maxActorBytes: DefaultMaxActorBytes}
	env, problems := parseEnvelope([]byte(`{
  "idempotencyKey": "000000000000",
  "destination": ["maurice", "george", "maurice"],
  "body": {"message": "Yep fine",  "n": [1, 2.50, null]},
  "expectsAck": true,
  "ignored": {"x": 1}
}`), lim)
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	if env.Key != "000000000000" || !slices.Equal(env.Destinations, []string{"maurice", "george", "maurice"}) ||
		string(env.Body) != `{"message":"Yep fine","n":[1,2.50,null]}` || !env.ExpectsAck {
		t.Fatalf("parsed %+v (body %s)", env, env.Body)
	}
	env, problems = parseEnvelope([]byte(`{"idempotencyKey":"000000000000","destination":[],"body":null}`), lim)
	if len(problems) > 0 || len(env.Destinations) != 0 || string(env.Body) != "null" || env.ExpectsAck {
		t.Fatalf("minimal envelope: %+v %v", env, problems)
	}
}

func TestEncodedRecordsDecode(t *testing.T) {
	at := time.Date(2020, 5, 9, 20, 20, 39, 999, time.FixedZone("x", 3600))
	rec := encodeMessage(nil, "000000000000", `ol"iv<ia>`, []byte(`{"a":[1]}`), true, at)
	want := `{"type":"msg","idempotencyKey":"000000000000","origin":"ol\"iv<ia>","body":{"a":[1]},"expectsAck":true,"sentAt":"2020-05-09T19:20:39Z"}`
	if string(rec) != want {
		t.Fatalf("encodeMessage = %s\nwant %s", rec, want)
	}
	s, ok := needsAck(rec)
	if !ok || s.Origin != `ol"iv<ia>` || s.Key != "000000000000" {
		t.Fatalf("needsAck = %+v %v", s, ok)
	}
	if _, ok := needsAck(encodeMessage(nil, "000000000000", "o", []byte("1"), false, at)); ok {
		t.Fatal("a message without expectsAck needs an ack")
	}
	ack := encodeAck(nil, "000000000000", "george", at)
	if string(ack) != `{"type":"ack","idempotencyKey":"000000000000","destination":"george","receivedAt":"2020-05-09T19:20:39Z"}` {
		t.Fatalf("encodeAck = %s", ack)
	}
	if _, ok := needsAck(ack); ok {
		t.Fatal("an ack needs an ack")
	}
}

func TestKeysDoNotCollide(t *testing.T) {
	// Actor names are arbitrary: their keys must differ whenever they do.
	names := []string{"a", "a/", "a/b", "inbox/a", "a:b", "a\x00", "", "=", "YQ"}
	seen := map[string]string{}
	for _, n := range names {
		for _, k := range []string{queueKey(n), messageDedupKey("000000000000", n), ackDedupKey("000000000000", n)} {
			if other, dup := seen[k]; dup {
				t.Fatalf("%q and %q share the key %q", n, other, k)
			}
			seen[k] = n
		}
		if !strings.HasPrefix(queueKey(n), "inbox/") || strings.Count(queueKey(n), "/") != 1 {
			t.Fatalf("queue key %q of %q is not one inbox/<token>", queueKey(n), n)
		}
	}
	if messageDedupKey("000000000000", "ab") == messageDedupKey("000000000000a", "b") {
		t.Fatal("key and origin run together")
	}
}

// FuzzParseEnvelope feeds the envelope decoder anything. Whatever it
// accepts is a valid envelope whose stored record decodes back to it;
// whatever it refuses comes with one-line problems.
func FuzzParseEnvelope(f *testing.F) {
	for _, s := range []string{
		// The seed README's envelopes.
		`{"idempotencyKey": "000000000000", "destination": ["maurice", "george"], "body": "Hey there, are you ok?", "expectsAck": true}`,
		`{"idempotencyKey": "111111111111", "destination": ["olivia", "george"], "body": {"message": "Yep fine check this loremipsum", "lorem": "ipsum"}}`,
		// The spec's problems.
		`{"idempotencyKey": "short", "destination": "x", "body": 1}`,
		`{"idempotencyKey": "` + strings.Repeat("a", 65) + `", "destination": [1, ""], "expectsAck": "yes"}`,
		`{"idempotencyKey": "has+invalid/chars", "destination": [], "body": null}`,
		`{"destination": null}`,
		`[]`, `null`, `"x"`, `{`, ``, `{"body": 1}{}`,
		// Unicode and escapes.
		`{"idempotencyKey": "abcdefghijkl", "destination": ["\u00e9", "\ud800", "a\u0000b"], "body": "\ud83d\ude00"}`,
		"{\"idempotencyKey\": \"abcdefghijkl\", \"destination\": [\"\xff\"], \"body\": 1}",
		`{"idempotencyKey": "abcdefghijkl", "idempotencyKey": "bad", "destination": ["a"], "body": [1e400, -0, 0.1]}`,
	} {
		f.Add([]byte(s))
	}
	lim := limits{maxDestinations: 8, maxActorBytes: 32}
	at := time.Date(2020, 5, 9, 20, 20, 39, 0, time.UTC)
	f.Fuzz(func(t *testing.T, data []byte) {
		env, problems := parseEnvelope(data, lim)
		if len(problems) > 0 {
			for _, p := range problems {
				if p == "" || strings.ContainsAny(p, "\r\n") || !utf8.ValidString(p) {
					t.Fatalf("problem %q is not one line", p)
				}
			}
			if len(problems) > 4+lim.maxDestinations {
				t.Fatalf("%d problems listed", len(problems))
			}
			return
		}
		if !keyRE.MatchString(env.Key) {
			t.Fatalf("accepted key %q", env.Key)
		}
		// The decoder agrees with encoding/json on what the strings say.
		var std struct {
			IdempotencyKey string
			Destination    []string
		}
		var fields map[string]json.RawMessage
		json.Unmarshal(data, &fields)
		json.Unmarshal(fields["idempotencyKey"], &std.IdempotencyKey)
		json.Unmarshal(fields["destination"], &std.Destination)
		if std.IdempotencyKey != env.Key || !slices.Equal(std.Destination, env.Destinations) {
			t.Fatalf("decoded %q %q, encoding/json says %q %q", env.Key, env.Destinations, std.IdempotencyKey, std.Destination)
		}
		if len(env.Destinations) > lim.maxDestinations {
			t.Fatalf("accepted %d destinations", len(env.Destinations))
		}
		for _, d := range env.Destinations {
			if d == "" || len(d) > lim.maxActorBytes || !utf8.ValidString(d) {
				t.Fatalf("accepted destination %q", d)
			}
		}
		var compacted bytes.Buffer
		if err := json.Compact(&compacted, env.Body); err != nil || !bytes.Equal(compacted.Bytes(), env.Body) {
			t.Fatalf("body %q is not compact JSON", env.Body)
		}
		// The stored record is JSON and gives everything back.
		for _, origin := range env.Destinations {
			rec := encodeMessage(nil, env.Key, origin, env.Body, env.ExpectsAck, at)
			var got struct {
				Type, IdempotencyKey, Origin, SentAt string
				Body                                 json.RawMessage
				ExpectsAck                           bool
			}
			if err := json.Unmarshal(rec, &got); err != nil {
				t.Fatalf("record %s: %v", rec, err)
			}
			if got.Type != "msg" || got.IdempotencyKey != env.Key || got.Origin != origin || !bytes.Equal(got.Body, env.Body) ||
				got.ExpectsAck != env.ExpectsAck || got.SentAt != "2020-05-09T20:20:39Z" {
				t.Fatalf("record %s decodes to %+v", rec, got)
			}
			if s, ok := needsAck(rec); ok != env.ExpectsAck || ok && (s.Origin != origin || s.Key != env.Key) {
				t.Fatalf("needsAck(%s) = %+v %v", rec, s, ok)
			}
		}
	})
}

func BenchmarkParseEnvelope(b *testing.B) {
	data := []byte(`{"idempotencyKey":"s-001-0000000001","destination":["r1"],"body":"` + strings.Repeat("p", 62) + `"}`)
	lim := limits{maxDestinations: DefaultMaxDestinations, maxActorBytes: DefaultMaxActorBytes}
	b.ReportAllocs()
	for b.Loop() {
		if _, problems := parseEnvelope(data, lim); problems != nil {
			b.Fatal(problems)
		}
	}
}

func BenchmarkEncodeMessage(b *testing.B) {
	body := []byte(`"` + strings.Repeat("p", 62) + `"`)
	at := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		encodeMessage(nil, "s-001-0000000001", "s1", body, false, at)
	}
}
