package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"
	"unicode/utf8"

	"golang.org/x/term"
)

// isTerminal reports whether r is a terminal (a person typing).
func isTerminal(r any) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// readInput reads a message from standard input. From a terminal it first
// says so on standard error, since a command waiting silently looks hung;
// the context ending (Ctrl-C) abandons the read at once.
func (a *app) readInput(ctx context.Context, cmd, what string) ([]byte, error) {
	if isTerminal(a.env.Stdin) {
		fmt.Fprintf(a.env.Stderr, "%s: reading the %s from the terminal: end it with Ctrl-D on a new line (Ctrl-C cancels; or give it as an argument)\n", cmd, what)
	}
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(a.env.Stdin)
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("reading standard input: %w", r.err)
		}
		return r.b, nil
	case <-ctx.Done():
		// The reader stays blocked on the terminal; the process exits.
		return nil, errInterrupted
	}
}

// output prints received messages in one of three forms: text (one line
// per message; a message that holds newlines is framed), text with ids,
// or JSON lines.
type output struct {
	w    io.Writer
	json bool
	ids  bool
}

// message is one received message for printing.
type message struct {
	ID          string `json:"id,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Body        []byte `json:"-"`
	Binary      bool   `json:"-"`
}

// print writes m. JSON lines carry id, content_type and body (text), or
// body_base64 when the body is not UTF-8 text. In text, a message ends
// with a newline; one that holds newlines (other than a last one) is
// framed as SMTP frames a message: each of its lines that starts with
// "." gets another ".", and a line holding only "." ends it, a separator
// that cannot occur in the message unescaped. A one-line message that
// starts with "." is escaped the same way.
func (o output) print(m message) error {
	if o.json {
		rec := struct {
			message
			Body       *string `json:"body,omitempty"`
			BodyBase64 *string `json:"body_base64,omitempty"`
		}{message: m}
		if !m.Binary && utf8.Valid(m.Body) {
			s := string(m.Body)
			rec.Body = &s
		} else {
			s := base64.StdEncoding.EncodeToString(m.Body)
			rec.BodyBase64 = &s
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		_, err = o.w.Write(append(b, '\n'))
		return err
	}
	var buf bytes.Buffer
	if o.ids {
		buf.WriteString(m.ID)
		buf.WriteByte('\t')
	}
	body := m.Body
	if m.Binary {
		body = fmt.Appendf(nil, "[binary message, %d bytes]", len(m.Body))
	}
	writeFramed(&buf, body)
	_, err := o.w.Write(buf.Bytes())
	return err
}

// writeFramed writes body as print describes.
func writeFramed(buf *bytes.Buffer, body []byte) {
	inner := bytes.TrimSuffix(body, []byte("\n"))
	multi := bytes.IndexByte(inner, '\n') >= 0
	if !multi && !bytes.HasPrefix(inner, []byte(".")) {
		buf.Write(inner)
		buf.WriteByte('\n')
		return
	}
	for line := range bytes.SplitSeq(inner, []byte("\n")) {
		if bytes.HasPrefix(line, []byte(".")) {
			buf.WriteByte('.')
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	if multi {
		buf.WriteString(".\n")
	}
}

// Reconnection backoff of the streaming commands: the wait doubles from
// the first to the last, with jitter (each wait is drawn between half and
// all of the current step).
const (
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
)

type backoff struct {
	min, max, cur time.Duration
}

func newBackoff() *backoff {
	return &backoff{min: DefaultMinBackoff, max: DefaultMaxBackoff, cur: DefaultMinBackoff}
}

// Next returns the next wait.
func (b *backoff) Next() time.Duration {
	d := b.cur/2 + time.Duration(rand.Int64N(int64(b.cur/2)+1))
	b.cur = min(2*b.cur, b.max)
	return d
}

func (b *backoff) Reset() { b.cur = b.min }

// Wait sleeps the next wait; false when ctx ended first.
func (b *backoff) Wait(ctx context.Context) bool { return sleep(ctx, b.Next()) }

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
