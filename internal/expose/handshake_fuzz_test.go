package expose

import (
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
		case req.proto != protoHTTP && req.proto != protoTCP:
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
