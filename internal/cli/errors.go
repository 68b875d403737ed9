package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/postern/postern/client"
)

// call says what a client call was about, so that its failure can be told
// in a person's terms: which server, which grant it needed on which path.
type call struct {
	server string // base URL
	token  bool   // a token was given
	action string // the grant the call needs ("read", "write", "serve", "call")
	path   string // the path of the grant ("/t/demo")
}

// explain turns a client error into a one-line message with its exit code:
// what failed, why, and what to do.
func explain(ctx context.Context, err error, c call) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return errInterrupted
	}
	var ce *client.Error
	var qf *client.QueueFullError
	switch {
	case errors.As(err, &ce):
		return explainAnswer(ce, c)
	case errors.As(err, &qf):
		return &exitError{code: ExitError, msg: fmt.Sprintf("tunnel full (%d messages): consumers are not keeping up (--no-backpressure drops the oldest instead)", qf.QueueSize)}
	case errors.Is(err, client.ErrDraining):
		return &exitError{code: ExitUnavailable, msg: fmt.Sprintf("postern at %s is shutting down (try again once it is back)", c.server)}
	}
	if msg, ok := unreachable(err, c.server); ok {
		return &exitError{code: ExitUnavailable, msg: msg}
	}
	return &exitError{code: ExitError, msg: strings.TrimPrefix(oneLine(err.Error()), "postern: ")}
}

// explainAnswer tells an answer the client did not expect.
func explainAnswer(ce *client.Error, c call) error {
	status := fmt.Sprintf("%d", ce.StatusCode)
	if ce.Header.Get(client.ErrorHeader) == "" {
		text := ce.Message
		if ct := ce.Header.Get("Content-Type"); strings.Contains(ct, "html") || strings.HasPrefix(strings.TrimSpace(text), "<") {
			text = "an HTML page"
		}
		if len(text) > 60 {
			text = text[:60] + "..."
		}
		return &exitError{code: ExitUnavailable, msg: fmt.Sprintf("%s answered %s %s, which is not an answer of postern (is --server pointing at postern, or a proxy in front of it?)", c.server, status, text)}
	}
	reason := ce.Message
	hint := ce.Header.Get(client.ErrorHeader)
	if u, err := strconv.Unquote(`"` + hint + `"`); err == nil {
		hint = u // the header's escapes of non-ASCII text
	}
	if hint != "" && !strings.Contains(reason, hint) {
		if reason == "" {
			reason = hint
		} else {
			reason += ": " + hint
		}
	}
	switch ce.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		if c.action == "" {
			return &exitError{code: ExitDenied, msg: fmt.Sprintf("%s %s (--token or POSTERN_TOKEN)", status, reason)}
		}
		if c.token {
			return &exitError{code: ExitDenied, msg: fmt.Sprintf("%s: the token given is not granted %q on %s (check --token or POSTERN_TOKEN, and the server's --token-file)", status, c.action, c.path)}
		}
		return &exitError{code: ExitDenied, msg: fmt.Sprintf("%s: this action needs a token granted %q on %s (--token or POSTERN_TOKEN)", status, c.action, c.path)}
	case http.StatusServiceUnavailable:
		return &exitError{code: ExitUnavailable, msg: fmt.Sprintf("%s %s (try again later)", status, reason)}
	case http.StatusTooManyRequests:
		msg := fmt.Sprintf("%s %s", status, reason)
		if ra := ce.Header.Get("Retry-After"); ra != "" {
			msg += fmt.Sprintf(" (try again in %s s)", ra)
		}
		return &exitError{code: ExitUnavailable, msg: msg}
	}
	if reason == "" {
		reason = http.StatusText(ce.StatusCode)
	}
	return &exitError{code: ExitError, msg: fmt.Sprintf("%s %s", status, reason)}
}

// unreachable tells a failure to talk to the server at all.
func unreachable(err error, server string) (string, bool) {
	var errno syscall.Errno
	var dns *net.DNSError
	var op *net.OpError
	var cert *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var recordHeader tls.RecordHeaderError
	check := "(check --server or POSTERN_SERVER)"
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("cannot reach postern at %s: connection refused (is \"postern serve\" running? --server or POSTERN_SERVER)", server), true
	case errors.As(err, &dns):
		return fmt.Sprintf("cannot reach postern at %s: host %q not found %s", server, dns.Name, check), true
	case errors.As(err, &recordHeader):
		return fmt.Sprintf("cannot reach postern at %s: the server does not speak TLS (use http:// in --server)", server), true
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Sprintf("cannot reach postern at %s: the server speaks plain HTTP (use http:// in --server)", server), true
	case errors.As(err, &cert), errors.As(err, &unknownAuth), errors.As(err, &hostname):
		return fmt.Sprintf("cannot reach postern at %s: its TLS certificate is not trusted: %s", server, lastPart(err)), true
	case strings.Contains(err.Error(), "malformed HTTP response"):
		return fmt.Sprintf("%s does not answer HTTP, so it is not postern %s", server, check), true
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EPIPE):
		return fmt.Sprintf("postern at %s closed the connection (is it restarting? try again)", server), true
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return fmt.Sprintf("cannot reach postern at %s: timed out %s", server, check), true
	case errors.As(err, &errno), errors.As(err, &op):
		return fmt.Sprintf("cannot reach postern at %s: %s %s", server, lastPart(err), check), true
	}
	return "", false
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// lastPart is the innermost reason of a chain of "a: b: c" errors.
func lastPart(err error) string {
	s := oneLine(err.Error())
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// transient reports whether a streaming command should reconnect after
// err, rather than give up: the server could not be reached, went away or
// is restarting. Refusals (bad input, missing grants) are for good.
func transient(err error) bool {
	var ce *client.Error
	var closed *client.ClosedError
	switch {
	case err == nil:
		return false
	case errors.Is(err, client.ErrDraining):
		return true
	case errors.As(err, &closed):
		return true
	case errors.As(err, &ce):
		if ce.Header.Get(client.ErrorHeader) == "" {
			return ce.StatusCode >= 500 // a proxy in front, while postern restarts
		}
		return ce.StatusCode >= 500 || ce.StatusCode == http.StatusTooManyRequests
	}
	_, ok := unreachable(err, "")
	return ok
}
