package broker

import (
	"bytes"
	"testing"

	"github.com/postern/postern/internal/store"
)

func TestPayloadRoundTrip(t *testing.T) {
	for _, m := range []*Message{
		{},
		{ID: store.ID{MS: 1700000000000, Seq: 3}, Body: []byte("hello")},
		{ID: store.ID{MS: 1<<64 - 1, Seq: 1<<64 - 1}, Binary: true, Body: []byte{0, 0xff}},
	} {
		got, err := decodePayload(encodePayload(m))
		if err != nil || got.ID != m.ID || got.Binary != m.Binary || !bytes.Equal(got.Body, m.Body) {
			t.Fatalf("round trip of %+v: %+v %v", m, got, err)
		}
	}
	for _, bad := range [][]byte{nil, {1}, {2, 0, 0, 0}, {1, 2, 0, 0}, {1, 0, 0x80}, {1, 0, 1}} {
		if _, err := decodePayload(bad); err == nil {
			t.Fatalf("decodePayload(%x) accepted", bad)
		}
	}
}

func FuzzDecodePayload(f *testing.F) {
	f.Add(encodePayload(&Message{ID: store.ID{MS: 5, Seq: 1}, Body: []byte("x")}))
	f.Add(encodePayload(&Message{Binary: true}))
	f.Add([]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := decodePayload(p)
		if err != nil {
			return
		}
		again, err := decodePayload(encodePayload(m))
		if err != nil || again.ID != m.ID || again.Binary != m.Binary || !bytes.Equal(again.Body, m.Body) {
			t.Fatalf("re-encoding %x changed it: %+v %v", p, again, err)
		}
	})
}
