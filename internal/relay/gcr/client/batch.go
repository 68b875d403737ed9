package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/postern/postern/internal/relay/gcr/wire"
)

// Batches (Options.BatchRequests, wire.BatchHeader): a poll's answer may
// hold several requests, served concurrently by workers, and the
// short complete responses of several requests go to the server in one
// post. There is no timer: a response is posted at once when fewer than
// maxBatchPosts batches are on their way, else it waits for the next
// post, which takes whatever waits then. So a lone request goes out as
// fast as without batches, and under load each post carries the
// responses that completed while the previous ones were sent.
//
// A worker does not wait for the post of its response: it marshals the
// response straight into the batch being gathered and takes its next
// request (nothing comes of the post's outcome but the next post; a
// request whose response is lost ends at the server, as any other). It
// waits only while a whole batch (maxBatchBytes) waits to be posted.

const (
	// maxBatchPosts is the most batches posted at once. One: the
	// responses that complete during a post all go in the next, and
	// fewer, larger posts cost less than more overlapping ones (1.14x the
	// requests/s of two, same run).
	maxBatchPosts = 1
	// maxBatchBytes bounds the responses gathered for one batch post:
	// more wait for it to go (each is at most smallPost).
	maxBatchBytes = 256 << 10
)

// dispatch serves the requests of a batch answer on the workers. A
// request goes to an idle worker, or to a new one while fewer than
// MaxPendingRequests run; with all of them busy it waits for one, and
// the poller does not poll meanwhile (the server keeps the requests,
// within its pickup timeout). Workers live until Run ends: a goroutine
// per request would grow a fresh stack for each (the HTTP client's calls
// are deep).
func (c *Client) dispatch(ctx context.Context, body []byte, streams bool) error {
	c.batches.Store(true)
	parts, err := wire.SplitDelimited(body)
	if err != nil {
		return fmt.Errorf("bad request batch from the relay server: %w", err)
	}
	for _, part := range parts {
		breq, err := wire.UnmarshalRequest(part)
		if err != nil {
			return fmt.Errorf("bad request message from the relay server: %w", err)
		}
		j := job{breq: breq, streams: streams}
		select {
		case c.work <- j:
			continue
		default:
		}
		select {
		case c.workers <- struct{}{}:
			c.workerWG.Go(func() { c.worker(ctx, j) })
		case c.work <- j:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// job is a request for a worker.
type job struct {
	breq    *wire.Request
	streams bool
}

// worker serves j, then the requests dispatch hands it, until ctx ends.
func (c *Client) worker(ctx context.Context, j job) {
	for {
		c.handle(ctx, j.breq, j.streams)
		select {
		case j = <-c.work:
		case <-ctx.Done():
			return
		}
	}
}

// postBatched adds r, a complete short response, to the next batch, and
// posts batches until none waits when no other goroutine does.
func (c *Client) postBatched(ctx context.Context, r *wire.Response) {
	c.batchMu.Lock()
	for len(c.batchBuf) >= maxBatchBytes {
		c.batchRoom.Wait()
	}
	c.batchBuf = binary.AppendUvarint(c.batchBuf, uint64(r.Size()))
	c.batchBuf = r.AppendMarshal(c.batchBuf)
	lead := c.batchPosting < maxBatchPosts
	if lead {
		c.batchPosting++
	}
	c.batchMu.Unlock()
	if lead {
		c.postBatches(ctx)
	}
}

// postBatches posts what waits, a batch at a time, until nothing does.
// Two buffers take turns: one is posted while the next batch gathers in
// the other.
func (c *Client) postBatches(ctx context.Context) {
	for {
		c.batchMu.Lock()
		out := c.batchBuf
		if len(out) == 0 {
			c.batchPosting--
			c.batchMu.Unlock()
			return
		}
		c.batchBuf, c.batchSpare = c.batchSpare[:0], nil
		c.batchRoom.Broadcast()
		c.batchMu.Unlock()

		err := c.send(ctx, c.batchTmpl, func() io.ReadCloser { return io.NopCloser(bytes.NewReader(out)) }, int64(len(out)))
		if err == nil && cap(out) <= 2*maxBatchBytes {
			// The server answered after reading the whole post: the
			// transport is done with the buffer.
			c.batchMu.Lock()
			c.batchSpare = out[:0]
			c.batchMu.Unlock()
		}
	}
}
