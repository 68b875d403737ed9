package channels

import "encoding/binary"

// Websocket opcodes of the frames postern writes or reads itself (RFC
// 6455 5.2).
const (
	opText   byte = 0x1
	opBinary byte = 0x2
	opClose  byte = 0x8
	opPing   byte = 0x9
	opPong   byte = 0xa
)

// maxControlPayload is the largest payload of a control frame.
const maxControlPayload = 125

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

// peekControl looks at the client frame that p starts with. When it is a
// ping or a pong as a client must send it (final, no extension bits,
// masked, at most maxControlPayload bytes), op is its opcode and size the
// length of the whole frame, which may be more than len(p) holds yet.
// size is 0 when the frame is anything else, well-formed or not: data
// and close frames and protocol errors are coder/websocket's to read.
// With fewer than 2 bytes it cannot tell: op is 0 and size 2.
func peekControl(p []byte) (op byte, size int) {
	if len(p) < 2 {
		return 0, 2
	}
	if p[0] != 0x80|opPing && p[0] != 0x80|opPong {
		return 0, 0
	}
	if p[1]&0x80 == 0 || int(p[1]&0x7f) > maxControlPayload {
		return 0, 0
	}
	return p[0] & 0x0f, 2 + 4 + int(p[1]&0x7f)
}

// unmaskControl copies the payload of frame, a whole control frame that
// peekControl accepted, unmasked into dst, and returns its length.
func unmaskControl(dst []byte, frame []byte) int {
	key, payload := frame[2:6], frame[6:]
	for i, b := range payload {
		dst[i] = b ^ key[i&3]
	}
	return len(payload)
}
