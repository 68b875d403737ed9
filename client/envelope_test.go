package client

import (
	"encoding/base64"
	"encoding/json"
	"testing"
)

func FuzzParseEnvelope(f *testing.F) {
	f.Add([]byte(`{"id":"1-0","data":"hello"}`))
	f.Add([]byte(`{"data":"AQI=","binary":true}`))
	f.Add([]byte(`{"gap":true}`))
	f.Add([]byte(`{"data":"!!","binary":true}`))
	f.Add([]byte(`[1,2]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseEnvelope(b)
		if err != nil {
			return
		}
		if m.Gap && (len(m.Data) > 0 || m.ID != "") {
			t.Fatalf("gap marker with content: %+v", m)
		}
		if m.Binary {
			// Re-encoding gives back what the server would have sent.
			again, err := parseEnvelope(mustJSON(t, map[string]any{"data": base64.StdEncoding.EncodeToString(m.Data), "binary": true}))
			if err != nil || string(again.Data) != string(m.Data) {
				t.Fatalf("binary round trip: %+v %v", again, err)
			}
		}
	})
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
