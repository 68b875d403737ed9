package httpapi

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"time"
)

// DefaultBodyReadTimeout bounds how long a client may take to send a small
// request body (a message, an envelope): a client trickling bytes must not
// hold a connection and its buffer for hours.
const DefaultBodyReadTimeout = 30 * time.Second

// Answers to bodies that did not arrive whole.
var (
	ErrBodyTimeout    = &Error{Status: http.StatusRequestTimeout, Message: "request body not received in time"}
	ErrBodyIncomplete = &Error{Status: http.StatusBadRequest, Message: "request body incomplete"}
)

// ReadBody reads r's whole body for a front door that stores bodies whole.
// More than max bytes is answered by tooLarge (ErrRequestTooLarge when nil),
// a body still incomplete after timeout (DefaultBodyReadTimeout when zero)
// by ErrBodyTimeout. The read deadline is lifted afterwards, so a handler
// that goes on to wait (a long-poll) is not cut short.
func ReadBody(w http.ResponseWriter, r *http.Request, max int64, timeout time.Duration, tooLarge *Error) ([]byte, error) {
	if tooLarge == nil {
		tooLarge = ErrRequestTooLarge
	}
	if r.ContentLength > max {
		return nil, tooLarge
	}
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if timeout == 0 {
		timeout = DefaultBodyReadTimeout
	}
	rc := http.NewResponseController(w)
	deadline := rc.SetReadDeadline(time.Now().Add(timeout)) == nil
	var body []byte
	var err error
	if r.ContentLength > 0 {
		// The length is known and within max: one buffer of that size,
		// which net/http's reader never overruns.
		body = make([]byte, r.ContentLength)
		if _, err = io.ReadFull(r.Body, body); err == io.EOF {
			err = io.ErrUnexpectedEOF // nothing came: cut short too
		}
	} else {
		var buf bytes.Buffer
		_, err = buf.ReadFrom(http.MaxBytesReader(w, r.Body, max))
		body = buf.Bytes()
	}
	if err != nil && err != io.EOF {
		// Only here: the target of errors.As lives on the heap, an
		// allocation per body when it was declared for every read.
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return nil, tooLarge
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The deadline stays: the server gives up on the rest of the
			// body at once and closes the connection after the answer.
			w.Header().Set("Connection", "close")
			return nil, ErrBodyTimeout
		default:
			// The client cut the body short (or the connection broke):
			// there is nobody to answer, but say what happened.
			return nil, ErrBodyIncomplete
		}
	}
	if deadline {
		rc.SetReadDeadline(time.Time{})
	}
	return body, nil
}
