package broker

import (
	"encoding/binary"
	"errors"

	"github.com/postern/postern/internal/store"
)

// The fan-out payload of a message: a version byte, a flags byte, the
// history id as two uvarints (ms, seq), then the body.
const (
	payloadVersion = 1
	flagBinary     = 1 << 0
)

var errPayload = errors.New("malformed channel payload")

func encodePayload(m *Message) []byte {
	b := make([]byte, 0, 2+2*binary.MaxVarintLen64+len(m.Body))
	var flags byte
	if m.Binary {
		flags |= flagBinary
	}
	b = append(b, payloadVersion, flags)
	b = binary.AppendUvarint(b, m.ID.MS)
	b = binary.AppendUvarint(b, m.ID.Seq)
	return append(b, m.Body...)
}

// decodePayload parses a payload from the fan-out. The body shares p's
// memory.
func decodePayload(p []byte) (*Message, error) {
	if len(p) < 2 || p[0] != payloadVersion || p[1]&^flagBinary != 0 {
		return nil, errPayload
	}
	m := shared(Message{Binary: p[1]&flagBinary != 0})
	rest := p[2:]
	ms, n := binary.Uvarint(rest)
	if n <= 0 {
		return nil, errPayload
	}
	rest = rest[n:]
	seq, n := binary.Uvarint(rest)
	if n <= 0 {
		return nil, errPayload
	}
	m.ID = store.ID{MS: ms, Seq: seq}
	m.Body = rest[n:]
	return m, nil
}
