package gcr

import (
	"encoding/binary"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/internal/auth"
	"github.com/postern/postern/internal/httpapi"
	"github.com/postern/postern/internal/relay/gcr/wire"
)

// Batches (wire.BatchHeader): a poll that asks for them is answered with
// the requests waiting for its name, up to the number it asked for, and
// a post of wire.BatchContentType carries several complete responses.
// Under load the protocol's two exchanges per request (the poll's answer,
// the post) are then shared by many requests. Only a node that does not
// share its backends offers them: a post that reaches a node not holding
// its request is forwarded as it came, which suits single messages.

// MaxBatch is the most requests one poll answer carries, whatever the
// relay client asks for (wire.BatchHeader); maxBatchBytes is the size
// past which it takes no more (the request that crosses it is in).
const (
	MaxBatch      = 64
	maxBatchBytes = 1 << 20
)

// batchCopyBytes: a batch answer up to this size is copied into one
// buffer and written at once; a larger one is written message by
// message, from where each lies.
const batchCopyBytes = 64 << 10

// batchSize is how many requests the poll r takes at once: 0 unless
// its relay client asks for batches (wire.BatchHeader) and this node
// offers them. A node that shares its backends does not: a response
// posted to another node is forwarded as it came, one message.
func (g *Relay) batchSize(r *http.Request) int {
	v := r.Header.Get(wire.BatchHeader)
	if v == "" || g.hub.Shared() {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0
	}
	return min(n, MaxBatch)
}

// deliverAll answers a poll with the requests ps taken for it: the one
// request in the protocol's form when the poll does not take batches
// (batch 0), else in a batch.
func (g *Relay) deliverAll(w http.ResponseWriter, ps []*pending, batch int) error {
	if batch == 0 {
		return g.deliver(w, ps[0])
	}
	size := 0
	for _, q := range ps {
		size += wire.SizeDelimited(len(q.msg))
	}
	h := w.Header()
	h["Content-Type"] = batchContentType
	h["Content-Length"] = []string{strconv.Itoa(size)}
	h[wire.StreamHeader] = streamsYes
	if err := writeBatch(w, ps, size); err != nil {
		for _, q := range ps {
			q.finish(errLost)
		}
		return nil
	}
	for _, q := range ps {
		q.touch()
	}
	return nil
}

// writeBatch writes the messages of ps, size bytes in all, each after
// its length.
func writeBatch(w http.ResponseWriter, ps []*pending, size int) error {
	if size <= batchCopyBytes {
		out := make([]byte, 0, size)
		for _, q := range ps {
			out = wire.AppendDelimited(out, q.msg)
		}
		_, err := w.Write(out)
		return err
	}
	var n [binary.MaxVarintLen64]byte
	for _, q := range ps {
		if _, err := w.Write(binary.AppendUvarint(n[:0], uint64(len(q.msg)))); err != nil {
			return err
		}
		if _, err := w.Write(q.msg); err != nil {
			return err
		}
	}
	return nil
}

// serveBatch is a /server/response of several complete responses
// (wire.BatchContentType): each is handed to its user as a single post
// of it would be. The answer is ok when every one was; 400 when some
// request was unknown or over (the others were handed all the same); a
// batch that does not decode, or holds a message without id or one the
// token may not serve, is refused whole.
func (g *Relay) serveBatch(w http.ResponseWriter, r *http.Request, rc *http.ResponseController, deadline bool) error {
	body, err := g.readMessage(w, r, nil)
	if err != nil {
		return err
	}
	if deadline {
		rc.SetReadDeadline(time.Time{})
	}
	// The messages alias body, which the user sides read: it is not
	// given back to the pool.
	parts, err := wire.SplitDelimited(body)
	if err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "Invalid batch: %v", err)
	}
	msgs := make([]*wire.Response, len(parts))
	allowed := ""
	for i, part := range parts {
		msg, err := wire.UnmarshalResponse(part)
		if err != nil {
			return httpapi.Errorf(http.StatusBadRequest, "Invalid HttpResponse %d of the batch: %v", i+1, err)
		}
		if !msg.HasID {
			return httpapi.Errorf(http.StatusBadRequest, "HttpResponse %d of the batch without id", i+1)
		}
		name, ok := nameOfID(msg.ID)
		if !ok {
			return invalidID(msg.ID)
		}
		if name != allowed {
			if !g.allow(r, auth.Serve, name) {
				return forbidden(auth.Serve, name)
			}
			allowed = name
		}
		msgs[i] = msg
	}
	var refused []string
	for _, msg := range msgs {
		p := g.lookup(msg.ID)
		if p == nil {
			refused = append(refused, msg.ID)
			continue
		}
		p.touchChunk(msg)
		// The chunk channel holds one: a request's only message goes in
		// at once. Another message for it (a retried batch) is refused
		// rather than waited for, which would hold up the rest.
		select {
		case p.chunks <- chunk{msg: msg}:
		default:
			refused = append(refused, msg.ID)
		}
	}
	if len(refused) > 0 {
		return httpapi.Errorf(http.StatusBadRequest, "Duplicate or invalid request ID %s", strings.Join(refused, " "))
	}
	return writeOK(w)
}
