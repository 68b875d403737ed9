package inbox

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Idempotency keys match ^[A-Za-z0-9\-_=]{12,64}$.
const (
	MinKeyLen = 12
	MaxKeyLen = 64
)

// Wire-exact problems of the original, in the spec's spelling.
const (
	problemInvalidJSON = "invalid enveloped message (invalid JSON)"
	problemNotObject   = "invalid enveloped message (not a JSON object)"
	problemKeyShort    = "idempotency key is too short"
	problemKeyLong     = "idempotency key is too long"
	problemKeyChars    = "idempotency key has invalid characters"
	problemNoFrom      = "missing 'From' header"
	problemEmptyActor  = "empty raw string for actor type"
)

// keyProblem says what is wrong with an idempotency key, or "". Like the
// original it names one problem: length first, then characters.
func keyProblem(k string) string {
	switch {
	case len(k) < MinKeyLen:
		return problemKeyShort
	case len(k) > MaxKeyLen:
		return problemKeyLong
	}
	for i := 0; i < len(k); i++ {
		if !keyChar(k[i]) {
			return problemKeyChars
		}
	}
	return ""
}

func keyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '='
}

// ValidKey reports whether k is an idempotency key.
func ValidKey(k string) bool { return keyProblem(k) == "" }

// envelope is a validated /send or /exchange body.
type envelope struct {
	Key          string
	Destinations []string // as given: duplicates kept, each non-empty
	Body         []byte   // the body's JSON, compacted
	ExpectsAck   bool
}

// limits are the envelope checks that are postern's, not the original's.
type limits struct {
	maxDestinations int
	maxActorBytes   int
}

// parseEnvelope decodes and validates an envelope. It lists every problem
// found, in the order of the fields (idempotencyKey, destination, body,
// expectsAck), as the original did; unknown fields are ignored. A body
// that is not UTF-8 counts as invalid JSON, so that everything stored can
// be served back as JSON.
func parseEnvelope(data []byte, lim limits) (envelope, []string) {
	if !utf8.Valid(data) {
		return envelope{}, []string{problemInvalidJSON}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		// Unmarshal checks the whole text before it decodes anything, so
		// a type error means valid JSON that is not an object.
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) || err != nil && !json.Valid(data) {
			return envelope{}, []string{problemInvalidJSON}
		}
		return envelope{}, []string{problemNotObject}
	}
	var env envelope
	var problems []string

	if raw, ok := fields["idempotencyKey"]; !ok {
		problems = append(problems, "field 'idempotencyKey' not found")
	} else if !isString(raw) {
		problems = append(problems, "invalid 'idempotencyKey' field: not a string literal")
	} else {
		env.Key = decodeString(raw)
		if p := keyProblem(env.Key); p != "" {
			problems = append(problems, p)
		}
	}

	if raw, ok := fields["destination"]; !ok {
		problems = append(problems, "field 'destination' not found")
	} else if raw[0] != '[' {
		problems = append(problems, "invalid 'destination' field: it is not a list")
	} else {
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			problems = append(problems, "invalid 'destination' field: it is not a list")
		} else if len(elems) > lim.maxDestinations {
			problems = append(problems, fmt.Sprintf("invalid 'destination' field: %d destinations, at most %d allowed", len(elems), lim.maxDestinations))
		} else {
			env.Destinations = make([]string, 0, len(elems))
			for i, e := range elems {
				if !isString(e) {
					problems = append(problems, fmt.Sprintf("invalid 'destination' field: element #%d is not a string literal", i))
					continue
				}
				d := decodeString(e)
				switch {
				case d == "":
					problems = append(problems, problemEmptyActor)
				case len(d) > lim.maxActorBytes:
					problems = append(problems, fmt.Sprintf("invalid 'destination' field: element #%d is longer than %d bytes", i, lim.maxActorBytes))
				default:
					env.Destinations = append(env.Destinations, d)
				}
			}
		}
	}

	if raw, ok := fields["body"]; !ok {
		problems = append(problems, "field 'body' not found")
	} else {
		var buf bytes.Buffer
		buf.Grow(len(raw))
		if err := json.Compact(&buf, raw); err != nil {
			// Unreachable: the whole document was valid.
			problems = append(problems, problemInvalidJSON)
		}
		env.Body = buf.Bytes()
	}

	if raw, ok := fields["expectsAck"]; ok {
		switch string(raw) {
		case "true":
			env.ExpectsAck = true
		case "false":
		default:
			problems = append(problems, "invalid 'expectsAck' field: it is not a boolean value")
		}
	}
	if len(problems) > 0 {
		return envelope{}, problems
	}
	return env, nil
}

func isString(raw json.RawMessage) bool { return len(raw) > 0 && raw[0] == '"' }

// decodeString decodes a valid JSON string literal.
func decodeString(raw json.RawMessage) string {
	if inner := raw[1 : len(raw)-1]; bytes.IndexByte(inner, '\\') < 0 {
		return string(inner) // no escapes: the text is the string (UTF-8 was checked)
	}
	var s string
	json.Unmarshal(raw, &s)
	return s
}

// Timestamps are UTC with second precision, as the original wrote them.
const timeLayout = "2006-01-02T15:04:05Z"

func appendTimestamp(dst []byte, t time.Time) []byte { return t.UTC().AppendFormat(dst, timeLayout) }

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaping only what JSON
// requires. s is valid UTF-8 (identities are checked, destinations come
// from decoded JSON), so decoding the result gives s back exactly.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// encodeMessage appends the wire form of a message, which is also how it
// is stored: one record serves every destination.
func encodeMessage(dst []byte, key, origin string, body []byte, expectsAck bool, sentAt time.Time) []byte {
	dst = append(dst, `{"type":"msg","idempotencyKey":`...)
	dst = appendString(dst, key)
	dst = append(dst, `,"origin":`...)
	dst = appendString(dst, origin)
	dst = append(dst, `,"body":`...)
	dst = append(dst, body...)
	if expectsAck {
		dst = append(dst, `,"expectsAck":true,"sentAt":"`...)
	} else {
		dst = append(dst, `,"expectsAck":false,"sentAt":"`...)
	}
	dst = appendTimestamp(dst, sentAt)
	return append(dst, `"}`...)
}

// encodeAck appends the wire form of an ack: destination is the actor that
// received the message.
func encodeAck(dst []byte, key, destination string, receivedAt time.Time) []byte {
	dst = append(dst, `{"type":"ack","idempotencyKey":`...)
	dst = appendString(dst, key)
	dst = append(dst, `,"destination":`...)
	dst = appendString(dst, destination)
	dst = append(dst, `,"receivedAt":"`...)
	dst = appendTimestamp(dst, receivedAt)
	return append(dst, `"}`...)
}

// stored is what an ack needs to know of a stored message.
type stored struct {
	Type       string `json:"type"`
	Key        string `json:"idempotencyKey"`
	Origin     string `json:"origin"`
	ExpectsAck bool   `json:"expectsAck"`
}

// needsAck decodes a stored record and reports whether it is a message
// that asked for an ack.
func needsAck(record []byte) (stored, bool) {
	var s stored
	if err := json.Unmarshal(record, &s); err != nil {
		return stored{}, false
	}
	return s, s.Type == "msg" && s.ExpectsAck && s.Origin != "" && ValidKey(s.Key)
}

// Queue keys and dedup keys. Actor names are any non-empty UTF-8, so they
// are base64-encoded wherever they become part of a key: keys stay short
// printable ASCII on every engine and never collide.
var b64 = base64.RawURLEncoding

// queueKey is the queue of actor's inbox; "inbox" is its metrics kind.
func queueKey(actor string) string { return "inbox/" + b64.EncodeToString([]byte(actor)) }

// messageDedupKey identifies a message in its destination's inbox.
func messageDedupKey(key, origin string) string {
	return "m:" + key + ":" + b64.EncodeToString([]byte(origin))
}

// ackDedupKey identifies an ack in its origin's inbox.
func ackDedupKey(key, destination string) string {
	return "a:" + key + ":" + b64.EncodeToString([]byte(destination))
}
