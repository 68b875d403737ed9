package wire_test

import (
	"bytes"
	"reflect"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/postern/postern/internal/relay/gcr/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The protocol's .proto, built as a descriptor so that the protobuf
// library's own (reflection-based) codec can check the hand-written one.
var httpHeader, httpRequest, httpResponse protoreflect.MessageDescriptor

func init() {
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	byt := descriptorpb.FieldDescriptorProto_TYPE_BYTES.Enum()
	msg := descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	i32 := descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum()
	i64 := descriptorpb.FieldDescriptorProto_TYPE_INT64.Enum()
	bol := descriptorpb.FieldDescriptorProto_TYPE_BOOL.Enum()
	f := func(name string, num int32, l *descriptorpb.FieldDescriptorProto_Label, t *descriptorpb.FieldDescriptorProto_Type, typeName string) *descriptorpb.FieldDescriptorProto {
		fd := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(num), Label: l, Type: t}
		if typeName != "" {
			fd.TypeName = proto.String(typeName)
		}
		return fd
	}
	const hdr = ".cloudrobotics.http_relay.v1alpha1.HttpHeader"
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("http_relay.proto"),
		Package: proto.String("cloudrobotics.http_relay.v1alpha1"),
		Syntax:  proto.String("proto2"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("HttpHeader"), Field: []*descriptorpb.FieldDescriptorProto{
				f("name", 1, opt, str, ""), f("value", 2, opt, str, ""),
			}},
			{Name: proto.String("HttpRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				f("id", 1, opt, str, ""), f("method", 2, opt, str, ""), f("url", 3, opt, str, ""),
				f("header", 4, rep, msg, hdr), f("body", 5, opt, byt, ""), f("host", 6, opt, str, ""),
			}},
			{Name: proto.String("HttpResponse"), Field: []*descriptorpb.FieldDescriptorProto{
				f("status_code", 1, opt, i32, ""), f("header", 2, rep, msg, hdr), f("body", 3, opt, byt, ""),
				f("id", 4, opt, str, ""), f("eof", 5, opt, bol, ""), f("trailer", 6, rep, msg, hdr),
				f("backend_duration_ms", 7, opt, i64, ""),
			}},
		},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		panic(err)
	}
	httpHeader = fd.Messages().ByName("HttpHeader")
	httpRequest = fd.Messages().ByName("HttpRequest")
	httpResponse = fd.Messages().ByName("HttpResponse")
}

func headersOf(m protoreflect.Message, field string) []wire.Header {
	l := m.Get(m.Descriptor().Fields().ByName(protoreflect.Name(field))).List()
	var out []wire.Header
	for i := 0; i < l.Len(); i++ {
		h := l.Get(i).Message()
		out = append(out, wire.Header{
			Name:  h.Get(httpHeader.Fields().ByName("name")).String(),
			Value: h.Get(httpHeader.Fields().ByName("value")).String(),
		})
	}
	return out
}

func TestRequestDecodesWithTheProtobufLibrary(t *testing.T) {
	in := wire.Request{
		ID: "robot:0123456789abcdef0123456789abcdef", Method: "POST", URL: "http://invalid/a?b=c",
		Headers: []wire.Header{{Name: "Accept", Value: "*/*"}, {Name: "X-Multi", Value: "1"}, {Name: "X-Multi", Value: "2"}, {Name: "X-Empty", Value: ""}},
		Body:    []byte("hello\x00"), Host: "relay.example",
	}
	m := dynamicpb.NewMessage(httpRequest)
	if err := proto.Unmarshal(in.Marshal(), m); err != nil {
		t.Fatal(err)
	}
	fs := httpRequest.Fields()
	for name, want := range map[string]string{"id": in.ID, "method": in.Method, "url": in.URL, "host": in.Host} {
		fd := fs.ByName(protoreflect.Name(name))
		if !m.Has(fd) || m.Get(fd).String() != want {
			t.Errorf("%s: has %v, %q; want %q", name, m.Has(fd), m.Get(fd).String(), want)
		}
	}
	if got := m.Get(fs.ByName("body")).Bytes(); !bytes.Equal(got, in.Body) {
		t.Errorf("body %q", got)
	}
	if got := headersOf(m, "header"); !reflect.DeepEqual(got, in.Headers) {
		t.Errorf("headers %v", got)
	}
	// Every string field is present even when empty: the original client
	// dereferences them.
	empty := dynamicpb.NewMessage(httpRequest)
	if err := proto.Unmarshal((&wire.Request{Headers: []wire.Header{{}}}).Marshal(), empty); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"id", "method", "url", "host"} {
		if !empty.Has(fs.ByName(protoreflect.Name(name))) {
			t.Errorf("empty %s not encoded", name)
		}
	}
	h := empty.Get(fs.ByName("header")).List().Get(0).Message()
	if !h.Has(httpHeader.Fields().ByName("name")) || !h.Has(httpHeader.Fields().ByName("value")) {
		t.Error("empty header fields not encoded")
	}
	back, err := wire.UnmarshalRequest(in.Marshal())
	if err != nil || !reflect.DeepEqual(*back, in) {
		t.Fatalf("round trip: %v %+v", err, back)
	}
}

// libraryResponse encodes r with the protobuf library.
func libraryResponse(r wire.Response) []byte {
	m := dynamicpb.NewMessage(httpResponse)
	fs := httpResponse.Fields()
	if r.HasStatus {
		m.Set(fs.ByName("status_code"), protoreflect.ValueOfInt32(r.StatusCode))
	}
	add := func(field string, hs []wire.Header) {
		l := m.Mutable(fs.ByName(protoreflect.Name(field))).List()
		for _, h := range hs {
			e := dynamicpb.NewMessage(httpHeader)
			e.Set(httpHeader.Fields().ByName("name"), protoreflect.ValueOfString(h.Name))
			e.Set(httpHeader.Fields().ByName("value"), protoreflect.ValueOfString(h.Value))
			l.Append(protoreflect.ValueOfMessage(e))
		}
	}
	add("header", r.Headers)
	add("trailer", r.Trailers)
	if r.Body != nil {
		m.Set(fs.ByName("body"), protoreflect.ValueOfBytes(r.Body))
	}
	if r.HasID {
		m.Set(fs.ByName("id"), protoreflect.ValueOfString(r.ID))
	}
	if r.EOF {
		m.Set(fs.ByName("eof"), protoreflect.ValueOfBool(true))
	}
	if r.BackendDurationMs != 0 {
		m.Set(fs.ByName("backend_duration_ms"), protoreflect.ValueOfInt64(r.BackendDurationMs))
	}
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func TestResponseMatchesTheProtobufLibrary(t *testing.T) {
	for _, r := range []wire.Response{
		{HasID: true, ID: "x:1"},
		{HasStatus: true, StatusCode: 200, HasID: true, ID: "n:ab", Headers: []wire.Header{{Name: "Content-Type", Value: "text/plain"}, {Name: "Set-Cookie", Value: "a=1"}, {Name: "Set-Cookie", Value: "b=2"}}, Body: []byte("body")},
		{HasStatus: true, StatusCode: -1, HasID: true, ID: "neg"},
		{HasID: true, ID: "t", EOF: true, Trailers: []wire.Header{{Name: "Grpc-Status", Value: "0"}}, BackendDurationMs: 1234, Body: []byte{}},
	} {
		head, body, tail := r.MarshalParts()
		if parts := append(append(append([]byte(nil), head...), body...), tail...); !bytes.Equal(parts, r.Marshal()) {
			t.Errorf("%+v: MarshalParts %x, Marshal %x", r, parts, r.Marshal())
		}
		lib := libraryResponse(r)
		got, err := wire.UnmarshalResponse(lib)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		if !reflect.DeepEqual(*got, r) {
			t.Errorf("decoded %+v, want %+v", *got, r)
		}
		// The library's field order is its own, so compare messages.
		a, b := dynamicpb.NewMessage(httpResponse), dynamicpb.NewMessage(httpResponse)
		if err := proto.Unmarshal(r.Marshal(), a); err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(lib, b); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(a, b) {
			t.Errorf("%+v: encoding %x decodes differently from the library's %x", r, r.Marshal(), lib)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for name, b := range map[string][]byte{
		"truncated varint":   {0x08, 0x80},
		"truncated bytes":    {0x1a, 0x05, 'a'},
		"group not closed":   {0x0b},
		"bad tag":            {0x00},
		"header not message": {0x12, 0x01, 0xff},
	} {
		if _, err := wire.UnmarshalResponse(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	// Unknown fields and fields of the wrong wire type are skipped; a later
	// value of a scalar wins.
	b := []byte{0x08, 0xc8, 0x01, 0x48, 0x05, 0x0a, 0x00, 0x20, 0x01, 0x08, 0xac, 0x02}
	r, err := wire.UnmarshalResponse(b)
	if err != nil || r.StatusCode != 300 || r.HasID {
		t.Fatalf("%v %+v", err, r)
	}
}

func TestResponseSizeHint(t *testing.T) {
	r := wire.Response{HasStatus: true, StatusCode: 200, Headers: []wire.Header{{Name: "Content-Type", Value: "text/plain"}},
		Body: bytes.Repeat([]byte("xyz"), 1000), HasID: true, ID: "n:0123456789abcdef0123456789abcdef", EOF: true}
	full := r.Marshal()
	head, body, _ := r.MarshalParts()
	for p := 0; p <= len(full); p++ {
		n, ok := wire.ResponseSizeHint(full[:p])
		switch {
		case p < len(head) && ok:
			t.Fatalf("prefix %d of a %d-byte head: hint %d before the body's length is known", p, len(head), n)
		case p >= len(head) && (!ok || n != len(head)+len(body)):
			t.Fatalf("prefix %d: hint %d %v, want %d", p, n, ok, len(head)+len(body))
		}
	}
	// MarshalAround is MarshalParts for a body the caller sends.
	h2, t2 := r.MarshalAround(len(r.Body))
	_, _, tail := r.MarshalParts()
	if !bytes.Equal(h2, head) || !bytes.Equal(t2, tail) {
		t.Fatalf("MarshalAround %x %x, MarshalParts %x %x", h2, t2, head, tail)
	}
	noBody := wire.Response{HasID: true, ID: "n:1", EOF: true}
	if n, ok := wire.ResponseSizeHint(noBody.Marshal()); ok {
		t.Fatalf("hint %d for a message without a body", n)
	}
}

func seedResponses(f *testing.F) {
	f.Add([]byte{})
	f.Add(libraryResponse(wire.Response{HasStatus: true, StatusCode: 200, HasID: true, ID: "n:1", Headers: []wire.Header{{Name: "A", Value: "b"}}, Body: []byte("x")}))
	f.Add(libraryResponse(wire.Response{HasID: true, ID: "n:1", EOF: true, Trailers: []wire.Header{{Name: "Grpc-Status", Value: "0"}}}))
	f.Add([]byte{0x08, 0x80})
	f.Add([]byte{0x12, 0x02, 0x0a, 0x00, 0x4b, 0x4c})
}

// FuzzUnmarshalResponse checks the hand-written decoder against the
// protobuf library on arbitrary input: both accept or both refuse, and what
// is accepted decodes to the same fields.
func FuzzUnmarshalResponse(f *testing.F) {
	seedResponses(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, ok := wire.ResponseSizeHint(b); ok && n < 0 {
			t.Fatalf("size hint %d", n)
		}

		mine, err := wire.UnmarshalResponse(b)
		m := dynamicpb.NewMessage(httpResponse)
		libErr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
		if (err == nil) != (libErr == nil) {
			t.Fatalf("mine: %v, library: %v", err, libErr)
		}
		if err != nil {
			return
		}
		if tag, start, n, ok := wire.ResponseBody(b); ok {
			// What comes before the body field is whole fields of a valid
			// message: they decode on their own.
			if tag < 0 || tag >= start || n < 0 {
				t.Fatalf("body field at %d, bytes at %d, %d of them", tag, start, n)
			}
			if _, err := wire.UnmarshalResponse(b[:tag]); err != nil {
				t.Fatalf("the fields before the body do not decode: %v", err)
			}
		}
		fs := httpResponse.Fields()
		want := wire.Response{
			HasStatus:         m.Has(fs.ByName("status_code")),
			StatusCode:        int32(m.Get(fs.ByName("status_code")).Int()),
			Headers:           headersOf(m, "header"),
			HasID:             m.Has(fs.ByName("id")),
			ID:                m.Get(fs.ByName("id")).String(),
			EOF:               m.Get(fs.ByName("eof")).Bool(),
			Trailers:          headersOf(m, "trailer"),
			BackendDurationMs: m.Get(fs.ByName("backend_duration_ms")).Int(),
		}
		if m.Has(fs.ByName("body")) {
			want.Body = m.Get(fs.ByName("body")).Bytes()
		}
		if !bytes.Equal(mine.Body, want.Body) {
			t.Fatalf("body %q, library %q", mine.Body, want.Body)
		}
		mine.Body, want.Body = nil, nil
		if !reflect.DeepEqual(*mine, want) {
			t.Fatalf("decoded %+v, library %+v", *mine, want)
		}
		head, body, tail := mine.MarshalParts()
		if parts := append(append(append([]byte(nil), head...), body...), tail...); !bytes.Equal(parts, mine.Marshal()) {
			t.Fatalf("MarshalParts %x differs from Marshal %x", parts, mine.Marshal())
		}
		if len(mine.Marshal()) != mine.Size() {
			t.Fatalf("Size %d, encoding %d bytes", mine.Size(), len(mine.Marshal()))
		}
		again, err := wire.UnmarshalResponse(mine.Marshal())
		if err != nil || !reflect.DeepEqual(*again, *mine) {
			t.Fatalf("re-encoding: %v %+v", err, again)
		}
	})
}

// FuzzUnmarshalRequest: the relay client side of the protocol, as the
// tests' relay client decodes it.
func FuzzUnmarshalRequest(f *testing.F) {
	f.Add((&wire.Request{ID: "n:1", Method: "GET", URL: "http://invalid/", Headers: []wire.Header{{Name: "A", Value: "b"}}}).Marshal())
	f.Add([]byte{0x0a, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		mine, err := wire.UnmarshalRequest(b)
		m := dynamicpb.NewMessage(httpRequest)
		libErr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
		if (err == nil) != (libErr == nil) {
			t.Fatalf("mine: %v, library: %v", err, libErr)
		}
		if err != nil {
			return
		}
		if got := m.Get(httpRequest.Fields().ByName("id")).String(); got != mine.ID {
			t.Fatalf("id %q, library %q", mine.ID, got)
		}
		if got := headersOf(m, "header"); !reflect.DeepEqual(got, mine.Headers) {
			t.Fatalf("headers %v, library %v", mine.Headers, got)
		}
	})
}

// TestEncodingSizesAndParts: Size is the encoding's length, the parts a
// sender writes around a body it sends itself make the same message, and
// encoding into a buffer with room allocates nothing.
func TestEncodingSizesAndParts(t *testing.T) {
	for _, r := range []wire.Response{
		{},
		{HasID: true, ID: "x:1"},
		{HasStatus: true, StatusCode: -1, HasID: true, ID: "neg", Body: []byte{}},
		{HasStatus: true, StatusCode: 200, Headers: []wire.Header{{Name: "A", Value: "b"}}, Body: bytes.Repeat([]byte("z"), 300),
			HasID: true, ID: "n:ab", EOF: true, Trailers: []wire.Header{{Name: "Grpc-Status", Value: "0"}}, BackendDurationMs: 1 << 40},
	} {
		full := r.Marshal()
		if len(full) != r.Size() || cap(full) != r.Size() {
			t.Errorf("%+v: %d bytes (cap %d), Size %d", r, len(full), cap(full), r.Size())
		}
		if r.Body != nil {
			head := r.AppendHead(nil, len(r.Body), true)
			tail := r.AppendTail(nil)
			if len(head) != r.HeadSize(len(r.Body)) || len(tail) != r.TailSize() {
				t.Errorf("%+v: head %d tail %d, sizes %d %d", r, len(head), len(tail), r.HeadSize(len(r.Body)), r.TailSize())
			}
			if got := append(append(head, r.Body...), tail...); !bytes.Equal(got, full) {
				t.Errorf("%+v: parts %x, Marshal %x", r, got, full)
			}
		}
		buf := make([]byte, 0, r.Size())
		if n := testing.AllocsPerRun(10, func() { buf = r.AppendMarshal(buf[:0]) }); n != 0 {
			t.Errorf("%+v: AppendMarshal allocates %v times", r, n)
		}
	}
	q := wire.Request{ID: "n:1", Method: "GET", URL: "http://invalid/", Headers: []wire.Header{{Name: "A", Value: "b"}}, Body: []byte("body"), Host: "h"}
	full := q.Marshal()
	if len(full) != q.Size() || cap(full) != q.Size() {
		t.Errorf("request: %d bytes (cap %d), Size %d", len(full), cap(full), q.Size())
	}
	head := q.AppendHead(nil, len(q.Body))
	if len(head) != q.HeadSize(len(q.Body)) || len(q.AppendTail(nil)) != q.TailSize() {
		t.Errorf("request head %d, HeadSize %d", len(head), q.HeadSize(len(q.Body)))
	}
	if got := q.AppendTail(append(head, q.Body...)); !bytes.Equal(got, full) {
		t.Errorf("request parts %x, Marshal %x", got, full)
	}
}

// TestStreamLayout: a message with its id before its body (what a sender
// streaming the body writes) decodes as the same message, and its start
// says whose body it is before the body: what comes before the body
// field decodes on its own.
func TestStreamLayout(t *testing.T) {
	r := wire.Response{HasStatus: true, StatusCode: 200, Headers: []wire.Header{{Name: "Content-Length", Value: "5"}},
		Body: []byte("hello"), HasID: true, ID: "n:0123456789abcdef0123456789abcdef", EOF: true,
		Trailers: []wire.Header{{Name: "X-T", Value: "1"}}, BackendDurationMs: 7}
	msg := append(append(r.AppendStreamHead(nil, len(r.Body)), r.Body...), r.AppendStreamTail(nil)...)
	got, err := wire.UnmarshalResponse(msg)
	if err != nil || !reflect.DeepEqual(*got, r) {
		t.Fatalf("decoded %+v %v, want %+v", got, err, r)
	}
	a, b := dynamicpb.NewMessage(httpResponse), dynamicpb.NewMessage(httpResponse)
	if err := proto.Unmarshal(msg, a); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(r.Marshal(), b); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(a, b) {
		t.Fatal("the library decodes the stream layout differently")
	}
	head := r.AppendStreamHead(nil, len(r.Body))
	tag, start, n, ok := wire.ResponseBody(head)
	if !ok || start != len(head) || n != len(r.Body) {
		t.Fatalf("ResponseBody %d %d %d %v on a %d-byte head", tag, start, n, ok, len(head))
	}
	before, err := wire.UnmarshalResponse(head[:tag])
	if err != nil || before.ID != r.ID || before.StatusCode != 200 || !before.EOF || before.Body != nil {
		t.Fatalf("before the body: %+v %v", before, err)
	}
	for p := range len(head) {
		if _, _, _, ok := wire.ResponseBody(head[:p]); ok {
			t.Fatalf("body found in a %d-byte prefix of a %d-byte head", p, len(head))
		}
	}
}

// TestBatchesAreDelimitedMessages: a batch is protobuf's delimited form,
// as the protobuf library writes and reads it (protodelim).
func TestBatchesAreDelimitedMessages(t *testing.T) {
	reqs := []*wire.Request{
		{ID: "n:1", Method: "GET", URL: "http://invalid/a", Headers: []wire.Header{{Name: "A", Value: "b"}}},
		{ID: "n:2", Method: "POST", URL: "http://invalid/b", Body: bytes.Repeat([]byte("x"), 300)},
		{ID: "n:3", Method: "PUT", URL: "http://invalid/", Host: "h"},
	}
	var batch []byte
	for _, r := range reqs {
		batch = wire.AppendDelimited(batch, r.Marshal())
	}
	rd := bytes.NewReader(batch)
	for i, r := range reqs {
		m := dynamicpb.NewMessage(httpRequest)
		if err := protodelim.UnmarshalFrom(rd, m); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if got := m.Get(httpRequest.Fields().ByName("id")).String(); got != r.ID {
			t.Fatalf("message %d: id %q, want %q", i, got, r.ID)
		}
	}
	if rd.Len() != 0 {
		t.Fatalf("%d bytes left", rd.Len())
	}

	var lib []byte
	for _, id := range []string{"n:1", "n:2"} {
		m := dynamicpb.NewMessage(httpResponse)
		m.Set(httpResponse.Fields().ByName("id"), protoreflect.ValueOfString(id))
		m.Set(httpResponse.Fields().ByName("eof"), protoreflect.ValueOfBool(true))
		var buf bytes.Buffer
		if _, err := protodelim.MarshalTo(&buf, m); err != nil {
			t.Fatal(err)
		}
		lib = append(lib, buf.Bytes()...)
	}
	parts, err := wire.SplitDelimited(lib)
	if err != nil || len(parts) != 2 {
		t.Fatalf("split: %d parts, %v", len(parts), err)
	}
	for i, p := range parts {
		r, err := wire.UnmarshalResponse(p)
		if err != nil || r.ID != []string{"n:1", "n:2"}[i] || !r.EOF {
			t.Fatalf("part %d: %+v %v", i, r, err)
		}
	}
	for _, bad := range [][]byte{nil, {0x80}, {0x05, 1, 2}} {
		if _, err := wire.SplitDelimited(bad); err == nil {
			t.Errorf("SplitDelimited(%x) did not fail", bad)
		}
	}
}

// FuzzSplitDelimited: a batch splits into messages, or fails, never
// panics; the messages joined again split into the same ones (not
// always into the same bytes: a length may be encoded in more bytes
// than it needs).
func FuzzSplitDelimited(f *testing.F) {
	f.Add(wire.AppendDelimited(wire.AppendDelimited(nil, []byte("ab")), nil))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		parts, err := wire.SplitDelimited(b)
		if err != nil {
			return
		}
		var again []byte
		for _, p := range parts {
			again = wire.AppendDelimited(again, p)
		}
		if len(again) > len(b) {
			t.Fatalf("split and joined %x, got %x", b, again)
		}
		split, err := wire.SplitDelimited(again)
		if err != nil || !reflect.DeepEqual(split, parts) {
			t.Fatalf("%x split into %x, joined %x split into %x (%v)", b, parts, again, split, err)
		}
	})
}

// BenchmarkUnmarshalResponse decodes the first chunk of a typical answer:
// a status, six headers and a small body.
func BenchmarkUnmarshalResponse(b *testing.B) {
	r := wire.Response{HasStatus: true, StatusCode: 200, HasID: true, ID: "a1b2c3d4", EOF: true,
		Body: []byte("hello, world\n")}
	for _, h := range [][2]string{{"Content-Type", "text/plain; charset=utf-8"}, {"Content-Length", "13"},
		{"Date", "Mon, 07 Dec 2026 19:00:00 GMT"}, {"Cache-Control", "no-store"}, {"Vary", "Accept-Encoding"},
		{"X-Request-Id", "7f3a"}} {
		r.Headers = append(r.Headers, wire.Header{Name: h[0], Value: h[1]})
	}
	msg := r.Marshal()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := wire.UnmarshalResponse(msg); err != nil {
			b.Fatal(err)
		}
	}
}
