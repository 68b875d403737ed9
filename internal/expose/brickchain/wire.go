// Package brickchain is the expose capability's transport for Brickchain
// agents (Brickchain/go-proxy.v1 clients), wire format included: the JSON
// frames exchanged over the agent's websocket (wire.go), the signed
// mandate token of a registration request and the client id derived from
// its key (mandate.go), and the Transport (transport.go, conn.go,
// roundtrip.go, websocket.go) that serves the agents' websockets and
// registers each client id they hold as a backend on the expose hub
// (internal/relay), as the native transport in internal/expose does for
// its agents. Mandate tokens are used once (ledger.go), clients are rate
// limited per id (limit.go).
//
// Every frame is a JSON text message with the base fields "@type"
// (SchemaBase + "/<name>.json"), "@timestamp" (RFC 3339, UTC) and "@id".
// Decoding is tolerant in what it ignores (unknown fields, missing or odd
// timestamps) and strict in what it needs (a known type, an id where the
// frame is correlated by it).
package brickchain

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// SchemaBase prefixes every frame type.
const SchemaBase = "https://proxy.brickchain.com/v1"

// The frame types.
const (
	TypeRegistrationRequest  = SchemaBase + "/registration-request.json"
	TypeRegistrationResponse = SchemaBase + "/registration-response.json"
	TypePing                 = SchemaBase + "/ping.json"
	TypeHTTPRequest          = SchemaBase + "/http-request.json"
	TypeHTTPResponse         = SchemaBase + "/http-response.json"
	TypeWSRequest            = SchemaBase + "/ws-request.json"
	TypeWSResponse           = SchemaBase + "/ws-response.json"
	TypeWSMessage            = SchemaBase + "/ws-message.json"
	TypeWSTeardown           = SchemaBase + "/ws-teardown.json"
	TypeDisconnect           = SchemaBase + "/disconnect.json"
	// TypeError is postern's own: the frame it sends before closing a
	// socket whose registration failed (the original wrote the bare error
	// text). Its "error" field says why; "@id" is the request's, if any.
	TypeError = SchemaBase + "/error.json"
)

// PingFrame is the ping exactly as the original server sent it.
var PingFrame = []byte(`{"@type":"https://proxy.brickchain.com/v1/ping.json"}` + "\n")

// Websocket message types of ws-message frames (RFC 6455 opcodes).
const (
	MessageText   = 1
	MessageBinary = 2
)

// Base holds the fields every frame has.
type Base struct {
	Type      string `json:"@type"`
	Timestamp string `json:"@timestamp,omitempty"`
	ID        string `json:"@id,omitempty"`
}

// NewBase returns the base fields of a new frame of type typ with id.
func NewBase(typ, id string) Base {
	return Base{Type: typ, Timestamp: time.Now().UTC().Format(time.RFC3339Nano), ID: id}
}

// RegistrationRequest is sent by an agent to claim the id of its key.
type RegistrationRequest struct {
	Base
	MandateToken string `json:"mandateToken"`
	Session      string `json:"session,omitempty"`
}

// RegistrationResponse confirms a registration.
type RegistrationResponse struct {
	Base
	KeyID    string `json:"keyID"`
	Hostname string `json:"hostname,omitempty"`
}

// HTTPRequest carries a user's request to an agent.
type HTTPRequest struct {
	Base
	URL     string            `json:"url"`
	Query   string            `json:"query,omitempty"`
	Headers map[string]string `json:"headers"`
	Method  string            `json:"method"`
	Body    string            `json:"body"`
}

// HTTPResponse is an agent's answer to an HTTPRequest with the same id.
type HTTPResponse struct {
	Base
	Headers     map[string]string `json:"headers"`
	ContentType string            `json:"contentType"`
	Status      int               `json:"status"`
	Body        string            `json:"body"`
}

// WSRequest asks an agent to open a websocket; its id names the connection.
type WSRequest struct {
	Base
	URL     string            `json:"url"`
	Query   string            `json:"query,omitempty"`
	Headers map[string]string `json:"headers"`
}

// WSResponse is an agent's answer to a WSRequest.
type WSResponse struct {
	Base
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// WSMessage is one websocket message of connection ID, either way.
type WSMessage struct {
	Base
	MessageType int    `json:"messageType"`
	Body        string `json:"body"`
}

// WSTeardown closes websocket connection ID, either way.
type WSTeardown struct {
	Base
}

// ErrorFrame is postern's registration failure frame (TypeError).
type ErrorFrame struct {
	Base
	Error string `json:"error"`
}

// Frame is a decoded frame from an agent: the union of the fields of every
// type, of which Type says which are meaningful.
type Frame struct {
	Type string
	ID   string

	// registration-request
	MandateToken string
	Session      string
	// http-response
	Status      int
	Headers     map[string]string
	ContentType string
	Body        string // base64 for http-response, raw text for ws-message
	// ws-response
	OK    bool
	Error string
	// ws-message
	MessageType int
	// registration-response, http-request and ws-request: what an agent
	// decodes (for agents written in Go, tests among them)
	KeyID    string
	Hostname string
	URL      string
	Query    string
	Method   string
}

// wireFrame is what Decode unmarshals into. Fields whose JSON type varies
// between agents in harmless ways (timestamps) are not decoded at all.
type wireFrame struct {
	Type         string            `json:"@type"`
	ID           string            `json:"@id"`
	MandateToken string            `json:"mandateToken"`
	Session      string            `json:"session"`
	Status       int               `json:"status"`
	Headers      map[string]string `json:"headers"`
	ContentType  string            `json:"contentType"`
	Body         string            `json:"body"`
	OK           bool              `json:"ok"`
	Error        string            `json:"error"`
	MessageType  int               `json:"messageType"`
	KeyID        string            `json:"keyID"`
	Hostname     string            `json:"hostname"`
	URL          string            `json:"url"`
	Query        string            `json:"query"`
	Method       string            `json:"method"`
}

// Decoding errors.
var (
	ErrMalformed   = errors.New("frame is not a JSON object of the expected shape")
	ErrUnknownType = errors.New("unknown frame type")
	ErrMissingID   = errors.New("frame has no @id")
)

// MaxIDBytes bounds the ids a frame may carry.
const MaxIDBytes = 256

// needsID lists the types an agent sends that are correlated by @id.
var needsID = map[string]bool{
	TypeHTTPResponse: true, TypeWSResponse: true, TypeWSMessage: true, TypeWSTeardown: true,
}

var known = map[string]bool{
	TypeRegistrationRequest: true, TypeRegistrationResponse: true, TypePing: true,
	TypeHTTPRequest: true, TypeHTTPResponse: true, TypeWSRequest: true, TypeWSResponse: true,
	TypeWSMessage: true, TypeWSTeardown: true, TypeDisconnect: true, TypeError: true,
}

// Decode parses one frame. An unknown type is ErrUnknownType with the type
// still reported in the returned frame, so a caller may ignore it.
func Decode(data []byte) (Frame, error) {
	var w wireFrame
	if err := json.Unmarshal(data, &w); err != nil {
		return Frame{}, fmt.Errorf("%w: %v", ErrMalformed, oneLine(err.Error()))
	}
	f := Frame{
		Type: w.Type, ID: w.ID, MandateToken: w.MandateToken, Session: w.Session,
		Status: w.Status, Headers: w.Headers, ContentType: w.ContentType, Body: w.Body,
		OK: w.OK, Error: w.Error, MessageType: w.MessageType, KeyID: w.KeyID, Hostname: w.Hostname,
		URL: w.URL, Query: w.Query, Method: w.Method,
	}
	if !known[f.Type] {
		return f, ErrUnknownType
	}
	if len(f.ID) > MaxIDBytes {
		return f, fmt.Errorf("%w: @id longer than %d bytes", ErrMalformed, MaxIDBytes)
	}
	if needsID[f.Type] && f.ID == "" {
		return f, ErrMissingID
	}
	return f, nil
}

// NewID returns a random UUID (version 4), the ids the original used.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// FirstValues flattens h to the first value of each header, as the wire
// format carries them; names in skip (canonical form) are left out.
func FirstValues(h http.Header, skip ...string) map[string]string {
	out := make(map[string]string, len(h))
	for k, v := range h {
		if len(v) == 0 {
			continue
		}
		drop := false
		for _, s := range skip {
			if strings.EqualFold(k, s) {
				drop = true
				break
			}
		}
		if !drop {
			out[k] = v[0]
		}
	}
	return out
}

// ScanHead reads a frame from r without keeping it: it returns the string
// values of its top-level "@type" and "@id" (each cut to MaxIDBytes) and
// skips everything else. It is how a frame too large to decode is still
// matched to the request it answers.
func ScanHead(r io.Reader) (typ, id string, err error) {
	s := &scanner{r: bufio.NewReaderSize(r, 4096)}
	if err := s.space(); err != nil {
		return "", "", err
	}
	if c, err := s.r.ReadByte(); err != nil || c != '{' {
		return "", "", ErrMalformed
	}
	for first := true; ; first = false {
		if err := s.space(); err != nil {
			return typ, id, err
		}
		c, err := s.r.ReadByte()
		if err != nil {
			return typ, id, ErrMalformed
		}
		if c == '}' && first {
			return typ, id, nil
		}
		if !first {
			if c == '}' {
				return typ, id, nil
			}
			if c != ',' {
				return typ, id, ErrMalformed
			}
			if err := s.space(); err != nil {
				return typ, id, err
			}
			if c, err = s.r.ReadByte(); err != nil {
				return typ, id, ErrMalformed
			}
		}
		if c != '"' {
			return typ, id, ErrMalformed
		}
		key, err := s.str(64)
		if err != nil {
			return typ, id, err
		}
		if err := s.space(); err != nil {
			return typ, id, err
		}
		if c, err := s.r.ReadByte(); err != nil || c != ':' {
			return typ, id, ErrMalformed
		}
		if err := s.space(); err != nil {
			return typ, id, err
		}
		if key == "@type" || key == "@id" {
			c, err := s.r.ReadByte()
			if err != nil {
				return typ, id, ErrMalformed
			}
			if c == '"' {
				v, err := s.str(MaxIDBytes)
				if err != nil {
					return typ, id, err
				}
				if key == "@type" {
					typ = v
				} else {
					id = v
				}
				continue
			}
			s.r.UnreadByte()
		}
		if err := s.value(0); err != nil {
			return typ, id, err
		}
	}
}

type scanner struct{ r *bufio.Reader }

func (s *scanner) space() error {
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			return ErrMalformed
		}
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			s.r.UnreadByte()
			return nil
		}
	}
}

// str reads the rest of a string whose opening quote was read, keeping at
// most keep bytes of it (escapes kept as written).
func (s *scanner) str(keep int) (string, error) {
	var b []byte
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			return "", ErrMalformed
		}
		switch {
		case c == '"':
			return string(b), nil
		case c == '\\':
			e, err := s.r.ReadByte()
			if err != nil {
				return "", ErrMalformed
			}
			if len(b)+2 <= keep {
				b = append(b, c, e)
			}
			continue
		case c < 0x20:
			return "", ErrMalformed
		}
		if len(b) < keep {
			b = append(b, c)
		}
	}
}

// maxDepth bounds nesting in skipped values.
const maxDepth = 64

// value skips one JSON value.
func (s *scanner) value(depth int) error {
	if depth > maxDepth {
		return ErrMalformed
	}
	c, err := s.r.ReadByte()
	if err != nil {
		return ErrMalformed
	}
	switch c {
	case '"':
		_, err := s.str(0)
		return err
	case '{', '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		for first := true; ; first = false {
			if err := s.space(); err != nil {
				return err
			}
			c, err := s.r.ReadByte()
			if err != nil {
				return ErrMalformed
			}
			if c == end {
				return nil
			}
			if !first {
				if c != ',' {
					return ErrMalformed
				}
				if err := s.space(); err != nil {
					return err
				}
			} else {
				s.r.UnreadByte()
			}
			if end == '}' {
				if c, err := s.r.ReadByte(); err != nil || c != '"' {
					return ErrMalformed
				}
				if _, err := s.str(0); err != nil {
					return err
				}
				if err := s.space(); err != nil {
					return err
				}
				if c, err := s.r.ReadByte(); err != nil || c != ':' {
					return ErrMalformed
				}
				if err := s.space(); err != nil {
					return err
				}
			}
			if err := s.value(depth + 1); err != nil {
				return err
			}
		}
	default:
		// A number or a literal: everything up to a delimiter.
		if !(c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n') {
			return ErrMalformed
		}
		for {
			c, err := s.r.ReadByte()
			if err != nil {
				return ErrMalformed
			}
			switch c {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				s.r.UnreadByte()
				return nil
			}
		}
	}
}

func oneLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}
