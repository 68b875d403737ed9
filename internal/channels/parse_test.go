package channels

import (
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/store"
)

func TestChannelPath(t *testing.T) {
	for _, tc := range []struct {
		path, mount, name string
		err               error
	}{
		{"/c/x", "/c", "/x", nil},
		{"/c/", "/c", "/", nil},
		{"/", "", "/", nil},
		{"/c", "/c", "", errPathLength},
		{"/c/" + strings.Repeat("日", 255), "/c", "/" + strings.Repeat("日", 255), nil},
		{"/c/" + strings.Repeat("日", 256), "/c", "", errPathLength},
		{"/c/\xff", "/c", "", errPathUTF8},
		{"/x", "/c", "", errPathLength},
	} {
		name, err := channelPath(tc.path, tc.mount)
		if err == nil && tc.err == nil && name != tc.name || (err == nil) != (tc.err == nil) || err != nil && err != tc.err {
			t.Errorf("channelPath(%q, %q) = %q, %v; want %q, %v", tc.path, tc.mount, name, err, tc.name, tc.err)
		}
	}
}

func FuzzValidPath(f *testing.F) {
	for _, s := range []string{"/", "/x", "//x", "/a/./b", "/\xff", "", "/" + strings.Repeat("é", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := validPath(s)
		n := utf8.RuneCountInString(s)
		switch {
		case !utf8.ValidString(s):
			if err != errPathUTF8 {
				t.Fatalf("%q: %v", s, err)
			}
		case n < 1 || n > MaxPathRunes:
			if err != errPathLength {
				t.Fatalf("%q: %v", s, err)
			}
		case err != nil:
			t.Fatalf("%q refused: %v", s, err)
		}
	})
}

// FuzzRedirect: a request path not in canonical form is redirected, once,
// to a canonical path under the same mount, with its query; a canonical
// one is not.
func FuzzRedirect(f *testing.F) {
	for _, s := range []string{"/c/x", "/c//x", "/c/x/../a", "/c/../..", "/c/a/./b/", "/c/.", "/c/%2E%2E/a", "/c/a?since=now", "/x/../c/a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		for _, mount := range []string{"/c", ""} {
			// As the server parses a request line's target.
			ru, err := url.ParseRequestURI(target)
			if err != nil || ru.Scheme != "" || !strings.HasPrefix(ru.Path, mount+"/") {
				continue
			}
			r := &http.Request{URL: ru}
			loc, ok := redirect(r, mount)
			if !ok {
				if name := r.URL.Path[len(mount):]; cleanPath(name) != name {
					t.Fatalf("%q (mount %q) not redirected", target, mount)
				}
				continue
			}
			u, err := url.Parse(loc)
			if err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(u.Path, mount+"/") || u.RawQuery != r.URL.RawQuery {
				t.Fatalf("%q (mount %q) redirected to %q (%v)", target, mount, loc, err)
			}
			again := &http.Request{URL: u}
			if l2, ok := redirect(again, mount); ok {
				t.Fatalf("%q (mount %q): %q redirects again, to %q", target, mount, loc, l2)
			}
		}
	})
}

func TestParseOrigin(t *testing.T) {
	same := []string{"https://example.com", "HTTPS://EXAMPLE.COM", "https://example.com:443", "https://example.com/"}
	want, _ := parseOrigin(same[0])
	for _, s := range same {
		if o, err := parseOrigin(s); err != nil || o != want {
			t.Errorf("parseOrigin(%q) = %v, %v", s, o, err)
		}
	}
	for _, s := range []string{"null", "", "example.com", "https://", "https://u:p@example.com", "https://example.com/x", "https://example.com?q"} {
		if _, err := parseOrigin(s); err == nil {
			t.Errorf("parseOrigin(%q) accepted", s)
		}
	}
}

func FuzzParseOrigin(f *testing.F) {
	for _, s := range []string{"https://example.com", "http://[::1]:8080", "null", "ws://a:b", "%zz://x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := parseOrigin(s)
		if err != nil {
			return
		}
		if o.host == "" || o.scheme != strings.ToLower(o.scheme) || o.host != strings.ToLower(o.host) {
			t.Fatalf("%q parsed to %+v", s, o)
		}
	})
}

// parseEvents is the event stream parser of the HTML standard, enough of
// it to read what appendEvent writes: the data and id of each event.
func parseEvents(b []byte) (datas, ids, types []string) {
	s := strings.ReplaceAll(strings.ReplaceAll(string(b), "\r\n", "\n"), "\r", "\n")
	var data []string
	id, typ, has := "", "", false
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			if has {
				datas, ids, types = append(datas, strings.Join(data, "\n")), append(ids, id), append(types, typ)
			}
			data, typ, has = nil, "", false
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			data, has = append(data, value), true
		case "id":
			id = value
		case "event":
			typ = value
		}
	}
	return
}

func FuzzAppendEvent(f *testing.F) {
	f.Add([]byte("hello"), false, uint64(1), uint64(0))
	f.Add([]byte("a\r\nb\rc\nd\n"), false, uint64(0), uint64(0))
	f.Add([]byte{0, 0xff}, true, uint64(9), uint64(3))
	f.Add([]byte("data: x\n\nid: 7"), false, uint64(2), uint64(2))
	f.Fuzz(func(t *testing.T, body []byte, binary bool, ms, seq uint64) {
		m := &broker.Message{ID: store.ID{MS: ms, Seq: seq}, Binary: binary, Body: body}
		out := appendEvent(nil, m)
		datas, ids, types := parseEvents(out)
		if len(datas) != 1 {
			t.Fatalf("%q made %d events", out, len(datas))
		}
		wantID := ""
		if !m.ID.IsZero() {
			wantID = m.ID.String()
		}
		if ids[0] != wantID {
			t.Fatalf("id %q, want %q", ids[0], wantID)
		}
		if binary {
			if types[0] != "binary" {
				t.Fatalf("type %q", types[0])
			}
			return
		}
		want := strings.ReplaceAll(strings.ReplaceAll(string(body), "\r\n", "\n"), "\r", "\n")
		if datas[0] != want || types[0] != "" {
			t.Fatalf("data %q, want %q", datas[0], want)
		}
		if !bytes.HasSuffix(out, []byte("\n\n")) {
			t.Fatalf("event not terminated: %q", out)
		}
	})
}

// FuzzPeekControl: peekControl takes exactly the pings and pongs a client
// may send (final, no extension bits, masked, at most 125 bytes) and
// leaves everything else to coder/websocket; it never claims more than a
// control frame, and unmaskControl recovers the payload that was masked.
func FuzzPeekControl(f *testing.F) {
	f.Add([]byte{0x89, 0x80, 1, 2, 3, 4}, []byte{})
	f.Add([]byte{0x8a, 0x83, 1, 2, 3, 4}, []byte("abc"))
	f.Add([]byte{0x81, 0x81, 0, 0, 0, 0}, []byte("x"))
	f.Add([]byte{0x89, 0x05}, []byte("hello"))
	f.Add([]byte{0x09, 0x80, 0, 0, 0, 0}, []byte{})
	f.Add([]byte{0x8a}, []byte{})
	f.Fuzz(func(t *testing.T, head, payload []byte) {
		frame := append(append([]byte(nil), head...), payload...)
		op, size := peekControl(frame)
		if len(frame) < 2 {
			if op != 0 || size != 2 {
				t.Fatalf("%x: op %#x size %d, want 0 2", frame, op, size)
			}
			return
		}
		b0, b1 := frame[0], frame[1]
		ours := (b0 == 0x89 || b0 == 0x8a) && b1&0x80 != 0 && b1&0x7f <= maxControlPayload
		if !ours {
			if op != 0 || size != 0 {
				t.Fatalf("%x: op %#x size %d, want it left to coder/websocket", frame, op, size)
			}
			return
		}
		if op != b0&0x0f || size != 6+int(b1&0x7f) {
			t.Fatalf("%x: op %#x size %d", frame, op, size)
		}
		if size > len(frame) {
			return // incomplete: the caller waits for more
		}
		var out [maxControlPayload]byte
		n := unmaskControl(out[:], frame[:size])
		for i := range n {
			if out[i]^frame[2+i%4] != frame[6+i] {
				t.Fatalf("%x: byte %d unmasked to %#x", frame, i, out[i])
			}
		}
		if n != size-6 {
			t.Fatalf("%x: %d payload bytes, want %d", frame, n, size-6)
		}
	})
}
