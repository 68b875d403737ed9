package redisstore

import (
	"context"
	"strconv"
	"time"

	"github.com/postern/postern/internal/store"
)

// hkeys returns the keys of topic's history: a capped stream and its meta
// hash, under one hash tag.
func (s *Store) hkeys(topic string) []string {
	base := s.prefix + "h{" + tag(topic) + "}:"
	return []string{base + "s", base + "m"}
}

// Record implements store.History.
func (s *Store) Record(ctx context.Context, topic string, m store.Message, maxLen int, ttl time.Duration) (store.ID, error) {
	now := s.now()
	var ttlMS int64
	if exp := expiry(now, ttl); exp > 0 {
		ttlMS = exp - now.UnixMilli()
	}
	res, err := s.exec(ctx, scRecord, s.hkeys(topic), now.UnixMilli(),
		m.ContentType, string(m.Body), strconv.Itoa(max(maxLen, 1)), strconv.FormatInt(ttlMS, 10))
	if err != nil {
		return store.ID{}, err
	}
	text, err := res.ToString()
	if err != nil {
		return store.ID{}, errBadReply
	}
	id, err := store.ParseID(text)
	if err != nil {
		return store.ID{}, errBadReply
	}
	return id, nil
}

// Since implements store.History.
func (s *Store) Since(ctx context.Context, topic string, after store.ID, max int) ([]store.Message, bool, error) {
	cursor := ""
	if !after.IsZero() {
		cursor = after.String()
	}
	res, err := s.exec(ctx, scSince, s.hkeys(topic), s.nowMS(), cursor, strconv.Itoa(maxOf(max, 0)))
	if err != nil {
		return nil, false, err
	}
	arr, err := res.ToArray()
	if err != nil || len(arr) != 2 {
		return nil, false, errBadReply
	}
	gap, _ := arr[0].AsInt64()
	entries, err := arr[1].ToArray()
	if err != nil {
		return nil, false, errBadReply
	}
	out := make([]store.Message, 0, len(entries))
	for _, e := range entries {
		pair, err := e.ToArray()
		if err != nil || len(pair) != 2 {
			return nil, false, errBadReply
		}
		idText, _ := pair[0].ToString()
		id, err := store.ParseID(idText)
		if err != nil {
			return nil, false, errBadReply
		}
		fields, err := pair[1].ToArray()
		if err != nil {
			return nil, false, errBadReply
		}
		m := store.Message{ID: id}
		for i := 0; i+1 < len(fields); i += 2 {
			name, _ := fields[i].ToString()
			val, _ := fields[i+1].ToString()
			switch name {
			case "x":
				if ms, _ := strconv.ParseInt(val, 10, 64); ms > 0 {
					m.ExpiresAt = time.UnixMilli(ms)
				}
			case "t":
				m.ContentType = val
			case "b":
				if val != "" {
					m.Body = []byte(val)
				}
			}
		}
		out = append(out, m)
	}
	return out, gap == 1, nil
}

func maxOf(a, b int) int {
	if a > b {
		return a
	}
	return b
}
