package brickchain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"time"

	"github.com/postern/postern/internal/queue"
	"github.com/postern/postern/internal/store"
)

// A brickchain mandate token is a bearer credential until it expires: one
// captured on its way (over plain HTTP, in a log) could register the same
// client id from another connection and take a share of its users. So a
// token registers from one connection only. Each token used is remembered,
// by its SHA-256, as a message with that dedup key in one queue of the
// engine (MandateQueue), until the token expires: the engine's dedup says
// whether it was used before, on every node that shares the engine, also
// after a restart of a durable one. The connection that used a token may
// use it again (a registration per session, a renewal); another may not.

// MandateQueue is the engine queue that remembers the mandate tokens used.
const MandateQueue = "mandate/used"

// DefaultMaxMandates bounds the tokens remembered; beyond it the oldest
// are forgotten (and could be played again within their lifetime).
const DefaultMaxMandates = 100_000

// errMandateUsed refuses a token another connection registered with.
var errMandateUsed = errors.New("mandate token was already used by another connection: sign a new one for each connection")

// mandateLedger remembers mandate tokens in the engine.
type mandateLedger struct {
	q   *queue.Core
	max int
}

// use records that a connection registers with the token whose hash is
// sum, which expires at expires; it fails with errMandateUsed when
// another connection used it.
func (l *mandateLedger) use(ctx context.Context, sum [sha256.Size]byte, expires, now time.Time) error {
	if l == nil || l.q == nil {
		return nil
	}
	ttl := expires.Sub(now)
	if ttl <= 0 {
		return nil // expired tokens are refused before they get here
	}
	res, err := l.q.Append(ctx, MandateQueue, store.Message{ContentType: "application/octet-stream"}, store.AppendOptions{
		MaxLen:   l.max,
		TTL:      ttl,
		DedupKey: hex.EncodeToString(sum[:]),
	})
	if err != nil {
		return err
	}
	if res.Duplicate {
		return errMandateUsed
	}
	return nil
}

// usedTokens is the tokens one connection registered with, newest last,
// at most maxUsedTokens of them.
type usedTokens [][sha256.Size]byte

const maxUsedTokens = 64

func (u *usedTokens) has(sum [sha256.Size]byte) bool { return slices.Contains(*u, sum) }

func (u *usedTokens) add(sum [sha256.Size]byte) {
	if len(*u) >= maxUsedTokens {
		*u = slices.Delete(*u, 0, 1)
	}
	*u = append(*u, sum)
}
