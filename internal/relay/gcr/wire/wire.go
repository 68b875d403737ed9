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

// Marshal encodes r, with every string field present.
func (r *Request) Marshal() []byte {
	size := protowire.SizeTag(1)*3 + protowire.SizeBytes(len(r.ID)) + protowire.SizeBytes(len(r.Method)) +
		protowire.SizeBytes(len(r.URL)) + headersSize(4, r.Headers) +
		protowire.SizeTag(5) + protowire.SizeBytes(len(r.Body)) + protowire.SizeTag(6) + protowire.SizeBytes(len(r.Host))
	b := make([]byte, 0, size)
	b = appendString(b, 1, r.ID)
	b = appendString(b, 2, r.Method)
	b = appendString(b, 3, r.URL)
	b = appendHeaders(b, 4, r.Headers)
	b = appendBytes(b, 5, r.Body)
	b = appendString(b, 6, r.Host)
	return b
}

// MarshalParts encodes r in three parts whose concatenation is Marshal's
// result: what comes before the body's bytes, the body itself (r.Body, not
// copied), and what follows. A client posting large chunks sends the parts
// one after another instead of copying the body into one message.
func (r *Response) MarshalParts() (head, body, tail []byte) {
	head, tail = r.marshalAround(len(r.Body), r.Body != nil)
	return head, r.Body, tail
}

// MarshalAround encodes r around a body of n bytes that the caller sends
// itself, from wherever it lies: head ends with the body field's tag and
// length, tail follows the body. r.Body is ignored.
func (r *Response) MarshalAround(n int) (head, tail []byte) {
	return r.marshalAround(n, true)
}

func (r *Response) marshalAround(n int, hasBody bool) (head, tail []byte) {
	head = make([]byte, 0, 32+headersSize(2, r.Headers))
	if r.HasStatus {
		head = appendVarint(head, 1, uint64(int64(r.StatusCode)))
	}
	head = appendHeaders(head, 2, r.Headers)
	if hasBody {
		head = protowire.AppendTag(head, 3, protowire.BytesType)
		head = protowire.AppendVarint(head, uint64(n))
	}
	tail = make([]byte, 0, 32+len(r.ID)+headersSize(6, r.Trailers))
	if r.HasID || r.ID != "" {
		tail = appendString(tail, 4, r.ID)
	}
	if r.EOF {
		tail = appendVarint(tail, 5, 1)
	}
	tail = appendHeaders(tail, 6, r.Trailers)
	if r.BackendDurationMs != 0 {
		tail = appendVarint(tail, 7, uint64(r.BackendDurationMs))
	}
	return head, tail
}

// ResponseSizeHint looks at the start of an encoded HttpResponse and,
// once it holds the body field's tag and length, returns where that body
// ends: a lower bound of the message's size, to size a buffer for the rest
// before it arrives (a message of unknown length, posted in chunked
// encoding, can then be read in place). ok is false until then, and for a
// start that is not a valid encoding (the decoder will say why). It is a
// hint only: the decoder does not rely on it.
func ResponseSizeHint(b []byte) (n int, ok bool) {
	const most = 1 << 31
	off := 0
	for off < len(b) {
		num, typ, tn := protowire.ConsumeTag(b[off:])
		if tn < 0 {
			return 0, false
		}
		if typ != protowire.BytesType {
			vn := protowire.ConsumeFieldValue(num, typ, b[off+tn:])
			if vn < 0 {
				return 0, false
			}
			off += tn + vn
			continue
		}
		l, ln := protowire.ConsumeVarint(b[off+tn:])
		if ln < 0 {
			return 0, false
		}
		l = min(l, most)
		end := off + tn + ln + int(l)
		if num == 3 {
			return end, true
		}
		if end > len(b) {
			return 0, false
		}
		off = end
	}
	return 0, false
}

// Marshal encodes r; optional fields are present when set (HasStatus,
// HasID, EOF true, BackendDurationMs non-zero).
func (r *Response) Marshal() []byte {
	b := make([]byte, 0, 32+len(r.Body)+len(r.ID)+headersSize(2, r.Headers)+headersSize(6, r.Trailers))
	if r.HasStatus {
		b = appendVarint(b, 1, uint64(int64(r.StatusCode)))
	}
	b = appendHeaders(b, 2, r.Headers)
	if r.Body != nil {
		b = appendBytes(b, 3, r.Body)
	}
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
