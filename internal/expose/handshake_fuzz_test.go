package expose

import (
	"bytes"
	"crypto/tls"
	"net/url"
	"strconv"
	"testing"
)

// FuzzAgentHandshake: whatever query a native agent's handshake carries,
// parseAgentRequest answers a request that makes sense or a 400, never
// panics; a port is only ever one from 1 to 65535, with proto=tcp.
func FuzzAgentHandshake(f *testing.F) {
	for _, s := range []string{
		"name=a", "name=a&proto=tcp", "name=a&proto=tcp&port=22", "proto=http&port=80",
		"proto=tcp&port=0", "proto=tcp&port=65536", "proto=tcp&port=+22", "proto=tcp&port=0022",
		"proto=tcp&proto=tcp", "proto=tcp&port=1&port=2", "proto=TCP", "proto=tcp&port=", "%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		req, perr := parseAgentRequest(q)
		if perr != nil {
			if perr.Status != 400 || perr.Message == "" {
				t.Fatalf("%q: refusal %d %q", raw, perr.Status, perr.Message)
			}
			return
		}
		switch {
		case req.proto != protoHTTP && req.proto != protoTCP && req.proto != protoTLS:
			t.Fatalf("%q: proto %q", raw, req.proto)
		case req.port < 0 || req.port > 65535:
			t.Fatalf("%q: port %d", raw, req.port)
		case req.port != 0 && req.proto != protoTCP:
			t.Fatalf("%q: a port without tcp", raw)
		case req.port != 0 && strconv.Itoa(req.port) != trimZeros(q.Get(AgentPortParam)):
			t.Fatalf("%q: port %d from %q", raw, req.port, q.Get(AgentPortParam))
		}
	})
}

func trimZeros(s string) string {
	for len(s) > 1 && s[0] == '0' {
		s = s[1:]
	}
	return s
}

// FuzzParsePortRange: a range parses to 1 <= lo <= hi <= 65535 or to an
// error (or to nothing, for an empty one).
func FuzzParsePortRange(f *testing.F) {
	for _, s := range []string{"", "22", "20000-20100", "1-65535", "0-1", "5-4", "-", "1-", "-1", " 7 ", "1-2-3", "99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lo, hi, err := ParsePortRange(s)
		if err != nil {
			return
		}
		if (lo == 0) != (hi == 0) || lo > hi || hi > 65535 || lo < 0 {
			t.Fatalf("%q: %d-%d", s, lo, hi)
		}
	})
}

// clientHello returns the bytes a crypto/tls client sends first for
// server name name.
func clientHello(name string) []byte {
	rec := &recorder{r: bytes.NewReader(nil)}
	w := &helloWriter{recorder: rec}
	tls.Client(w, &tls.Config{ServerName: name}).Handshake()
	return w.sent
}

type helloWriter struct {
	*recorder
	sent []byte
}

func (w *helloWriter) Write(p []byte) (int, error) {
	w.sent = append(w.sent, p...)
	return len(p), nil
}

// FuzzPeekHello: whatever a connection starts with, peekHello returns
// (no panic, no hang on a reader that ends), what it read is exactly a
// prefix of the input (it is given back to whoever gets the connection),
// and a server name comes only from a TLS handshake record.
func FuzzPeekHello(f *testing.F) {
	hello := clientHello("shop.expose.test")
	f.Add(hello)
	f.Add(hello[:len(hello)/2])
	f.Add(clientHello(""))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: shop.expose.test\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0xff, 0xff, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		name, read, err := peekHello(bytes.NewReader(in))
		if !bytes.HasPrefix(in, read) {
			t.Fatalf("read %q is not a prefix of the input", read)
		}
		if name != "" && (err != nil || in[0] != 0x16) {
			t.Fatalf("name %q from input starting %x (err %v)", name, in[:1], err)
		}
		if len(in) > 0 && in[0] != 0x16 && len(read) != 1 {
			t.Fatalf("read %d bytes of a connection that is no TLS", len(read))
		}
	})
	// The real hello's name is found, and nothing is lost.
	name, read, err := peekHello(bytes.NewReader(append(hello, "rest"...)))
	if name != "shop.expose.test" || err != nil || !bytes.HasPrefix(append(hello, "rest"...), read) || len(read) < len(hello) {
		f.Fatalf("real hello: %q %v, read %d of %d", name, err, len(read), len(hello))
	}
}
