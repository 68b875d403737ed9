// Package wire holds the protobuf messages of the Cloud Robotics http-relay
// protocol (proto2, package cloudrobotics.http_relay.v1alpha1), coded by
// hand with protowire so that no generated code or protoc is needed:
//
//	HttpHeader   { optional string name = 1; optional string value = 2; }
//	HttpRequest  { optional string id = 1; optional string method = 2; optional string url = 3;
//	               repeated HttpHeader header = 4; optional bytes body = 5; optional string host = 6; }
//	HttpResponse { optional int32 status_code = 1; repeated HttpHeader header = 2; optional bytes body = 3;
//	               optional string id = 4; optional bool eof = 5; repeated HttpHeader trailer = 6;
//	               optional int64 backend_duration_ms = 7; }
//
// Decoding follows protobuf's rules: fields may come in any order, a
// repeated scalar's last value wins, unknown fields are skipped, and a
// field whose wire type does not match its declaration is skipped as an
// unknown one, as the protobuf library does.
package wire

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// StreamHeader, on a poll's answer, says that the server relays a large
// response body as it arrives when the message's id comes before it
// (AppendStreamHead): a relay client may then send a body of any length
// in one message. It is postern's; the original sends no such header, and
// reads every message whole.
const StreamHeader = "X-Postern-Relay-Streams"

// Content types of the messages on the wire.
const (
	RequestContentType  = "application/vnd.google.protobuf;proto=cloudrobotics.http_relay.v1alpha1.HttpRequest"
	ResponseContentType = "application/vnd.google.protobuf;proto=cloudrobotics.http_relay.v1alpha1.HttpResponse"
)

// Header is an HttpHeader. The original relay client dereferences both
// fields without checking, so they are always encoded, empty or not.
type Header struct {
	Name, Value string
}

// Request is an HttpRequest: a user request handed to a relay client.
type Request struct {
	ID      string
	Method  string
	URL     string
	Headers []Header
	Body    []byte
	Host    string
}

// Response is an HttpResponse: one chunk of a backend's answer.
type Response struct {
	// HasStatus reports whether status_code was present; the first chunk
	// of a response must carry it.
	HasStatus  bool
	StatusCode int32
	Headers    []Header
	Body       []byte
	// HasID reports whether id was present.
	HasID    bool
	ID       string
	EOF      bool
	Trailers []Header
	// BackendDurationMs is how long the backend took, when the relay
	// client measured it.
	BackendDurationMs int64
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func headerSize(h Header) int {
	return protowire.SizeTag(1) + protowire.SizeBytes(len(h.Name)) +
		protowire.SizeTag(2) + protowire.SizeBytes(len(h.Value))
}

func appendHeaders(b []byte, num protowire.Number, hs []Header) []byte {
	for _, h := range hs {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(headerSize(h)))
		b = appendString(b, 1, h.Name)
		b = appendString(b, 2, h.Value)
	}
	return b
}

func headersSize(num protowire.Number, hs []Header) int {
	n := 0
	for _, h := range hs {
		n += protowire.SizeTag(num) + protowire.SizeBytes(headerSize(h))
	}
	return n
}

// Size is the length of r's encoding.
func (r *Request) Size() int {
	return r.headSize(len(r.Body)) + len(r.Body) + r.tailSize()
}

func (r *Request) headSize(n int) int {
	return protowire.SizeTag(1)*3 + protowire.SizeBytes(len(r.ID)) + protowire.SizeBytes(len(r.Method)) +
		protowire.SizeBytes(len(r.URL)) + headersSize(4, r.Headers) + protowire.SizeTag(5) + protowire.SizeVarint(uint64(n))
}

func (r *Request) tailSize() int { return protowire.SizeTag(6) + protowire.SizeBytes(len(r.Host)) }

// Marshal encodes r, with every string field present, into a buffer of
// its size.
func (r *Request) Marshal() []byte {
	return r.AppendMarshal(make([]byte, 0, r.Size()))
}

// AppendMarshal appends r's encoding to b: no allocation when b has room.
func (r *Request) AppendMarshal(b []byte) []byte {
	b = r.AppendHead(b, len(r.Body))
	b = append(b, r.Body...)
	return r.AppendTail(b)
}

// HeadSize is the length of what AppendHead appends for a body of n
// bytes; TailSize that of what AppendTail appends.
func (r *Request) HeadSize(n int) int { return r.headSize(n) }
func (r *Request) TailSize() int      { return r.tailSize() }

// AppendHead appends the fields that come before the body's bytes, for a
// body of n bytes, ending with the body field's tag and length: a sender
// puts the body's bytes right after it, from wherever they come (a
// server reads a user's request body straight into the message). r.Body
// is ignored.
func (r *Request) AppendHead(b []byte, n int) []byte {
	b = appendString(b, 1, r.ID)
	b = appendString(b, 2, r.Method)
	b = appendString(b, 3, r.URL)
	b = appendHeaders(b, 4, r.Headers)
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

// AppendTail appends the fields that follow the body.
func (r *Request) AppendTail(b []byte) []byte { return appendString(b, 6, r.Host) }

// MarshalParts encodes r in three parts whose concatenation is Marshal's
// result: what comes before the body's bytes, the body itself (r.Body, not
// copied), and what follows. A client posting large chunks sends the parts
// one after another instead of copying the body into one message.
func (r *Response) MarshalParts() (head, body, tail []byte) {
	head = r.AppendHead(make([]byte, 0, r.HeadSize(len(r.Body))+r.TailSize()), len(r.Body), r.Body != nil)
	// The tail shares the head's buffer: one allocation for both.
	tail = r.AppendTail(head[len(head):len(head)])
	return head[:len(head):len(head)], r.Body, tail
}

// MarshalAround encodes r around a body of n bytes that the caller sends
// itself, from wherever it lies: head ends with the body field's tag and
// length, tail follows the body. r.Body is ignored.
func (r *Response) MarshalAround(n int) (head, tail []byte) {
	head = r.AppendHead(make([]byte, 0, r.HeadSize(n)+r.TailSize()), n, true)
	tail = r.AppendTail(head[len(head):len(head)])
	return head[:len(head):len(head)], tail
}

// HeadSize is the length of what AppendHead appends for a body of n
// bytes (with the body field); TailSize that of what AppendTail appends.
func (r *Response) HeadSize(n int) int {
	s := headersSize(2, r.Headers) + protowire.SizeTag(3) + protowire.SizeBytes(n)
	if r.HasStatus {
		s += protowire.SizeTag(1) + protowire.SizeVarint(uint64(int64(r.StatusCode)))
	}
	return s - n
}

func (r *Response) TailSize() int {
	s := headersSize(6, r.Trailers)
	if r.HasID || r.ID != "" {
		s += protowire.SizeTag(4) + protowire.SizeBytes(len(r.ID))
	}
	if r.EOF {
		s += protowire.SizeTag(5) + 1
	}
	if r.BackendDurationMs != 0 {
		s += protowire.SizeTag(7) + protowire.SizeVarint(uint64(r.BackendDurationMs))
	}
	return s
}

// Size is the length of r's encoding.
func (r *Response) Size() int {
	if r.Body == nil {
		return r.HeadSize(0) - protowire.SizeTag(3) - 1 + r.TailSize()
	}
	return r.HeadSize(len(r.Body)) + len(r.Body) + r.TailSize()
}

// AppendHead appends the fields that come before the body's bytes: the
// status and headers and, with hasBody, the body field's tag and length
// for a body of n bytes. r.Body is ignored.
func (r *Response) AppendHead(b []byte, n int, hasBody bool) []byte {
	if r.HasStatus {
		b = appendVarint(b, 1, uint64(int64(r.StatusCode)))
	}
	b = appendHeaders(b, 2, r.Headers)
	if hasBody {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(n))
	}
	return b
}

// AppendTail appends the fields that follow the body: the id, eof, the
// trailers and the backend's duration.
func (r *Response) AppendTail(b []byte) []byte {
	if r.HasID || r.ID != "" {
		b = appendString(b, 4, r.ID)
	}
	if r.EOF {
		b = appendVarint(b, 5, 1)
	}
	b = appendHeaders(b, 6, r.Trailers)
	if r.BackendDurationMs != 0 {
		b = appendVarint(b, 7, uint64(r.BackendDurationMs))
	}
	return b
}

// AppendMarshal appends r's encoding to b: no allocation when b has room.
// Optional fields are present when set (HasStatus, HasID, EOF true,
// BackendDurationMs non-zero; the body when not nil).
func (r *Response) AppendMarshal(b []byte) []byte {
	b = r.AppendHead(b, len(r.Body), r.Body != nil)
	b = append(b, r.Body...)
	return r.AppendTail(b)
}

// ResponseSizeHint looks at the start of an encoded HttpResponse and,
// once it holds the body field's tag and length, returns where that body
// ends: a lower bound of the message's size, to size a buffer for the rest
// before it arrives (a message of unknown length, posted in chunked
// encoding, can then be read in place). ok is false until then, and for a
// start that is not a valid encoding (the decoder will say why). It is a
// hint only: the decoder does not rely on it.
func ResponseSizeHint(b []byte) (n int, ok bool) {
	_, start, size, ok := ResponseBody(b)
	return start + size, ok
}

// ResponseBody finds the first body field in the start of an encoded
// HttpResponse: tag is where the field begins, start where its bytes
// begin, and n how many there are (at most 1<<31). ok is false until b
// holds the field's tag and length, and for a start that is not a valid
// encoding. Everything before tag is whole fields: b[:tag] decodes as a
// message of its own. A server reads the start of a posted message with
// it, and relays a large body as it comes when the fields before it say
// whose it is (see AppendStreamHead).
func ResponseBody(b []byte) (tag, start, n int, ok bool) {
	const most = 1 << 31
	off := 0
	for off < len(b) {
		num, typ, tn := protowire.ConsumeTag(b[off:])
		if tn < 0 {
			return 0, 0, 0, false
		}
		if typ != protowire.BytesType {
			vn := protowire.ConsumeFieldValue(num, typ, b[off+tn:])
			if vn < 0 {
				return 0, 0, 0, false
			}
			off += tn + vn
			continue
		}
		l, ln := protowire.ConsumeVarint(b[off+tn:])
		if ln < 0 {
			return 0, 0, 0, false
		}
		l = min(l, most)
		if num == 3 {
			return off, off + tn + ln, int(l), true
		}
		end := off + tn + ln + int(l)
		if end > len(b) {
			return 0, 0, 0, false
		}
		off = end
	}
	return 0, 0, 0, false
}

// AppendStreamHead appends what a sender writes before a body of n bytes
// that it streams right after: the id first, then the status, the
// headers and eof, then the body field's tag and length. A server that
// relays a body as it comes knows whose it is before the body arrives
// (ResponseBody); protobuf lets fields come in any order, so a server
// that reads the message whole decodes it as any other. r.Body is
// ignored.
func (r *Response) AppendStreamHead(b []byte, n int) []byte {
	if r.HasID || r.ID != "" {
		b = appendString(b, 4, r.ID)
	}
	if r.HasStatus {
		b = appendVarint(b, 1, uint64(int64(r.StatusCode)))
	}
	b = appendHeaders(b, 2, r.Headers)
	if r.EOF {
		b = appendVarint(b, 5, 1)
	}
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

// AppendStreamTail appends what follows a streamed body (see
// AppendStreamHead): the trailers and the backend's duration.
func (r *Response) AppendStreamTail(b []byte) []byte {
	b = appendHeaders(b, 6, r.Trailers)
	if r.BackendDurationMs != 0 {
		b = appendVarint(b, 7, uint64(r.BackendDurationMs))
	}
	return b
}

// Marshal encodes r into a buffer of its size (see AppendMarshal).
func (r *Response) Marshal() []byte {
	return r.AppendMarshal(make([]byte, 0, r.Size()))
}

// field reads one field: its number, wire type and, for the types used
// here, its value (v for varints, data for length-delimited fields).
func field(b []byte) (num protowire.Number, typ protowire.Type, v uint64, data []byte, n int, err error) {
	num, typ, tn := protowire.ConsumeTag(b)
	if tn < 0 {
		return 0, 0, 0, nil, 0, fmt.Errorf("bad tag: %w", protowire.ParseError(tn))
	}
	if !num.IsValid() {
		return 0, 0, 0, nil, 0, fmt.Errorf("field number %d out of range", num)
	}
	rest := b[tn:]
	switch typ {
	case protowire.VarintType:
		v, vn := protowire.ConsumeVarint(rest)
		if vn < 0 {
			return 0, 0, 0, nil, 0, fmt.Errorf("field %d: %w", num, protowire.ParseError(vn))
		}
		return num, typ, v, nil, tn + vn, nil
	case protowire.BytesType:
		d, dn := protowire.ConsumeBytes(rest)
		if dn < 0 {
			return 0, 0, 0, nil, 0, fmt.Errorf("field %d: %w", num, protowire.ParseError(dn))
		}
		return num, typ, 0, d, tn + dn, nil
	default:
		vn := protowire.ConsumeFieldValue(num, typ, rest)
		if vn < 0 {
			return 0, 0, 0, nil, 0, fmt.Errorf("field %d: %w", num, protowire.ParseError(vn))
		}
		return num, typ, 0, nil, tn + vn, nil
	}
}

// commonNames are header names as Go programs send them (canonical), so
// that decoding one does not allocate its string.
var commonNames = func() map[string]string {
	m := map[string]string{}
	for _, n := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Accept-Ranges", "Age", "Authorization",
		"Cache-Control", "Connection", "Content-Disposition", "Content-Encoding", "Content-Language",
		"Content-Length", "Content-Range", "Content-Type", "Cookie", "Date", "Etag", "Expires",
		"Forwarded", "Grpc-Encoding", "Grpc-Message", "Grpc-Status", "Grpc-Timeout", "Host",
		"If-Match", "If-Modified-Since", "If-None-Match", "Last-Modified", "Location", "Origin",
		"Pragma", "Range", "Referer", "Sec-Websocket-Accept", "Sec-Websocket-Extensions",
		"Sec-Websocket-Key", "Sec-Websocket-Protocol", "Sec-Websocket-Version", "Server",
		"Set-Cookie", "Strict-Transport-Security", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"User-Agent", "Vary", "Via", "Www-Authenticate", "X-Content-Type-Options",
		"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Request-Id",
	} {
		m[n] = n
	}
	return m
}()

func decodeHeader(b []byte) (Header, error) {
	var h Header
	for len(b) > 0 {
		num, typ, _, data, n, err := field(b)
		if err != nil {
			return h, err
		}
		b = b[n:]
		switch num {
		case 1, 2:
			if typ != protowire.BytesType {
				continue
			}
			if num == 1 {
				if name, ok := commonNames[string(data)]; ok {
					h.Name = name // no allocation: the lookup does not copy data
				} else {
					h.Name = string(data)
				}
			} else {
				h.Value = string(data)
			}
		}
	}
	return h, nil
}

// firstHeaders is the room UnmarshalResponse makes for headers when it
// meets the first: most answers carry up to eight.
const firstHeaders = 8

// UnmarshalResponse decodes an HttpResponse. Body aliases b.
func UnmarshalResponse(b []byte) (*Response, error) {
	r := &Response{}
	for len(b) > 0 {
		num, typ, v, data, n, err := field(b)
		if err != nil {
			return nil, err
		}
		b = b[n:]
		want := protowire.BytesType
		switch num {
		case 1, 5, 7:
			want = protowire.VarintType
		case 2, 3, 4, 6:
		default:
			continue // unknown field
		}
		if typ != want {
			continue // as the protobuf library does: an unknown field
		}
		switch num {
		case 1:
			r.HasStatus, r.StatusCode = true, int32(v)
		case 2, 6:
			h, err := decodeHeader(data)
			if err != nil {
				return nil, fmt.Errorf("field %d: %w", num, err)
			}
			if num == 2 {
				if r.Headers == nil {
					// Answers carry several headers: one array
					// for the usual number rather than growing
					// it from one, three times.
					r.Headers = make([]Header, 0, firstHeaders)
				}
				r.Headers = append(r.Headers, h)
			} else {
				r.Trailers = append(r.Trailers, h)
			}
		case 3:
			r.Body = data
		case 4:
			r.HasID, r.ID = true, string(data)
		case 5:
			r.EOF = v != 0
		case 7:
			r.BackendDurationMs = int64(v)
		}
	}
	return r, nil
}

// UnmarshalRequest decodes an HttpRequest. Body aliases b.
func UnmarshalRequest(b []byte) (*Request, error) {
	r := &Request{}
	for len(b) > 0 {
		num, typ, _, data, n, err := field(b)
		if err != nil {
			return nil, err
		}
		b = b[n:]
		if num < 1 || num > 6 {
			continue
		}
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			r.ID = string(data)
		case 2:
			r.Method = string(data)
		case 3:
			r.URL = string(data)
		case 4:
			h, err := decodeHeader(data)
			if err != nil {
				return nil, fmt.Errorf("field 4: %w", err)
			}
			r.Headers = append(r.Headers, h)
		case 5:
			r.Body = data
		case 6:
			r.Host = string(data)
		}
	}
	return r, nil
}

// Batches: several messages in one HTTP exchange.
//
// A relay client that sends BatchHeader on its poll, with the most
// requests it takes at once, may get from a server that offers batches
// (postern, on a node that does not share its backends) an answer of
// BatchContentType: one or more HttpRequest messages, each preceded by
// its length as a varint (protobuf's delimited form). It may then post
// several complete HttpResponse messages (each with its id and eof) in
// one /server/response of BatchContentType, the same way. The messages
// are the protocol's; only the envelope carries more than one. A relay
// client that does not ask (the original) never sees a batch, and a
// server that does not offer them (the original) ignores the header and
// answers one HttpRequest as always.
const (
	BatchHeader      = "X-Postern-Relay-Batch"
	BatchContentType = "application/vnd.postern.relay-batch"
)

// AppendDelimited appends msg preceded by its length.
func AppendDelimited(b, msg []byte) []byte {
	return protowire.AppendBytes(b, msg)
}

// SizeDelimited is the length of what AppendDelimited appends for a
// message of n bytes.
func SizeDelimited(n int) int { return protowire.SizeBytes(n) }

// SplitDelimited returns the messages of a batch, aliasing b. A batch
// holds at least one message.
func SplitDelimited(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		m, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, fmt.Errorf("batch message %d: %w", len(out)+1, protowire.ParseError(n))
		}
		out = append(out, m)
		b = b[n:]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty batch")
	}
	return out, nil
}
