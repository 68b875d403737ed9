package store

import (
	"errors"
	"strconv"
	"time"
)

// ID identifies a message within its queue: milliseconds since the Unix epoch
// and a sequence number within that millisecond, written "<ms>-<seq>" (the
// shape of a Redis stream id, which tunnel clients expect). The zero ID is
// "no message".
type ID struct {
	MS  uint64
	Seq uint64
}

// maxIDPart is the largest value one part of an id may hold on the wire:
// 16 decimal digits.
const maxIDPart = 9999999999999999

var errBadID = errors.New("message id must be <ms>-<seq>, each 1 to 16 digits")

// ParseID parses "<ms>-<seq>" where each part is 1 to 16 decimal digits.
func ParseID(s string) (ID, error) {
	dash := -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-':
			if dash >= 0 {
				return ID{}, errBadID
			}
			dash = i
		case c < '0' || c > '9':
			return ID{}, errBadID
		}
	}
	if dash < 1 || dash > 16 || len(s)-dash-1 < 1 || len(s)-dash-1 > 16 {
		return ID{}, errBadID
	}
	ms, err1 := strconv.ParseUint(s[:dash], 10, 64)
	seq, err2 := strconv.ParseUint(s[dash+1:], 10, 64)
	if err1 != nil || err2 != nil {
		return ID{}, errBadID
	}
	return ID{MS: ms, Seq: seq}, nil
}

// String formats the id as "<ms>-<seq>".
func (id ID) String() string {
	b := make([]byte, 0, 24)
	return string(id.Append(b))
}

// Append appends the text form of id to b.
func (id ID) Append(b []byte) []byte {
	b = strconv.AppendUint(b, id.MS, 10)
	b = append(b, '-')
	return strconv.AppendUint(b, id.Seq, 10)
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id.MS == 0 && id.Seq == 0 }

// Compare returns -1, 0 or +1 as id is before, equal to or after o.
func (id ID) Compare(o ID) int {
	switch {
	case id.MS < o.MS:
		return -1
	case id.MS > o.MS:
		return 1
	case id.Seq < o.Seq:
		return -1
	case id.Seq > o.Seq:
		return 1
	}
	return 0
}

// NextID returns the id that follows last at time now: now's millisecond with
// sequence 0 when the clock has moved past last, otherwise last's millisecond
// with the next sequence number. Ids therefore strictly increase even when
// the clock stands still or steps back.
func NextID(last ID, now time.Time) ID {
	ms := uint64(max(now.UnixMilli(), 0))
	if ms > last.MS {
		return ID{MS: ms}
	}
	if last.Seq >= maxIDPart {
		return ID{MS: last.MS + 1}
	}
	return ID{MS: last.MS, Seq: last.Seq + 1}
}
