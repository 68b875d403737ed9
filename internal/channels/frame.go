package channels

import "encoding/binary"

// Websocket opcodes of the frames postern writes itself (RFC 6455 5.2).
const (
	opText   byte = 0x1
	opBinary byte = 0x2
	opClose  byte = 0x8
)

// appendFrame appends to b one final, unmasked server frame of type op
// carrying p: what coder/websocket writes for a message when compression
// is off, made here so that a message is framed once for all its
// subscribers.
func appendFrame(b []byte, op byte, p []byte) []byte {
	n := len(p)
	b = append(b, 0x80|op)
	switch {
	case n <= 125:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, p...)
}
