package channels

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"time"

	"github.com/postern/postern/internal/broker"
)

// Event stream (Server-Sent Events) wire format, for clients that cannot
// use websockets:
//
//	id: <ms>-<seq>          when the channel keeps a history
//	data: <line>            one per line of the message
//
//	event: binary           a binary message: data is base64
//	event: gap              the history may be missing messages after
//	                        the cursor; sent before the replay
//	event: end              the server ends the stream; data says why
//	                        ("slow consumer", "server shutting down")
//
// Lines of a message split at CR, LF or CRLF, as the format requires, so
// a message's CR and CRLF line ends arrive as LF.
const eventRetryMillis = "3000"

func (c *Channels) serveEvents(w http.ResponseWriter, r *http.Request, name string) error {
	since, _, err := parseSince(r, true)
	if err != nil {
		return err
	}
	sub, err := c.b.Subscribe(r.Context(), name, broker.SubscribeOptions{Since: since})
	if err != nil {
		return publishError(err)
	}
	defer sub.Close()
	c.streams.Add(1)
	defer c.streams.Add(-1)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)

	buf := make([]byte, 0, 512)
	buf = append(buf, "retry: "+eventRetryMillis+"\n\n"...)
	if sub.Gap() {
		buf = append(buf, "event: gap\ndata: messages may have been missed\n\n"...)
	}
	keepAlive := time.NewTimer(c.opts.KeepAlive)
	defer keepAlive.Stop()
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		rc.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout))
		if _, err := w.Write(buf); err != nil {
			return err
		}
		buf = buf[:0]
		keepAlive.Reset(c.opts.KeepAlive)
		return rc.Flush()
	}
	for {
		for len(buf) < 32<<10 {
			m, ok, err := sub.TryNext()
			if err != nil {
				reason := "closed"
				switch {
				case errors.Is(err, broker.ErrSlow):
					reason = "slow consumer"
					c.m.closed.WithLabelValues("slow").Inc()
				case errors.Is(err, broker.ErrShuttingDown):
					reason = "server shutting down"
					c.m.closed.WithLabelValues("shutdown").Inc()
				}
				buf = append(buf, "event: end\ndata: "+reason+"\n\n"...)
				flush()
				return nil
			}
			if !ok {
				break
			}
			buf = append(buf, m.Wire(wireEvent, eventBytes)...)
		}
		if err := flush(); err != nil {
			return nil // the client went away or stopped reading
		}
		if sub.Len() > 0 {
			continue
		}
		select {
		case <-sub.Signal():
		case <-sub.Done():
		case <-keepAlive.C:
			buf = append(buf, ": keep-alive\n\n"...)
		case <-r.Context().Done():
			return nil
		}
	}
}

// eventBytes is m as one event: made once per message, whatever the
// number of event streams it goes to.
func eventBytes(m *broker.Message) []byte { return appendEvent(nil, m) }

// appendEvent appends m as one event.
func appendEvent(b []byte, m *broker.Message) []byte {
	if !m.ID.IsZero() {
		b = append(b, "id: "...)
		b = m.ID.Append(b)
		b = append(b, '\n')
	}
	if m.Binary {
		b = append(b, "event: binary\ndata: "...)
		b = base64.StdEncoding.AppendEncode(b, m.Body)
		return append(b, "\n\n"...)
	}
	body := m.Body
	for {
		i := bytes.IndexAny(body, "\r\n")
		b = append(b, "data: "...)
		if i < 0 {
			b = append(b, body...)
			b = append(b, '\n')
			break
		}
		b = append(b, body[:i]...)
		b = append(b, '\n')
		if body[i] == '\r' && i+1 < len(body) && body[i+1] == '\n' {
			i++
		}
		body = body[i+1:]
	}
	return append(b, '\n')
}
