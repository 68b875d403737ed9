package client

import (
	"bytes"
	"context"
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

const (
	// maxBatchPosts is the most batches posted at once. One: the
	// responses that complete during a post all go in the next, and
	// fewer, larger posts cost less than more overlapping ones (1.14x the
	// requests/s of two, same run).
	maxBatchPosts = 1
	// maxBatchBytes bounds the messages of one batch post (each is at
	// most smallPost).
	maxBatchBytes = 256 << 10
)

// batchItem is a response waiting to go in a batch; done gets the
// outcome of its post.
type batchItem struct {
	msg  []byte
	done chan error
}

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

// postBatched posts r, a complete short response, in a batch, and
// returns the outcome of that post.
func (c *Client) postBatched(ctx context.Context, r *wire.Response) error {
	it := &batchItem{msg: r.AppendMarshal(make([]byte, 0, r.Size())), done: make(chan error, 1)}
	c.batchMu.Lock()
	c.batchQueue = append(c.batchQueue, it)
	lead := c.batchPosting < maxBatchPosts
	if lead {
		c.batchPosting++
	}
	c.batchMu.Unlock()
	if lead {
		// This goroutine posts until nothing waits; its own response
		// goes in the first batch.
		c.postBatches(ctx)
	}
	select {
	case err := <-it.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// postBatches posts what waits, a batch at a time, until nothing does.
func (c *Client) postBatches(ctx context.Context) {
	for {
		c.batchMu.Lock()
		if len(c.batchQueue) == 0 {
			c.batchPosting--
			c.batchMu.Unlock()
			return
		}
		size, n := 0, 0
		for _, it := range c.batchQueue {
			k := wire.SizeDelimited(len(it.msg))
			if n > 0 && size+k > maxBatchBytes {
				break
			}
			size += k
			n++
		}
		items := make([]*batchItem, n)
		copy(items, c.batchQueue)
		rest := copy(c.batchQueue, c.batchQueue[n:])
		clear(c.batchQueue[rest:])
		c.batchQueue = c.batchQueue[:rest]
		c.batchMu.Unlock()

		out := make([]byte, 0, size)
		for _, it := range items {
			out = wire.AppendDelimited(out, it.msg)
		}
		err := c.send(ctx, c.batchTmpl, func() io.ReadCloser { return io.NopCloser(bytes.NewReader(out)) }, int64(len(out)))
		for _, it := range items {
			it.done <- err
		}
	}
}
