package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// commandTimeout bounds one command the harness sends itself.
const commandTimeout = 5 * time.Second

// RedisError is an error reply ("-ERR ...").
type RedisError string

func (e RedisError) Error() string { return string(e) }

// do sends one command to addr on a connection of its own and returns the
// reply: a string (simple or bulk), an int64, nil (a nil bulk or array), a
// []any, or a RedisError as the error. The harness uses it to set servers
// up and to watch them; it is no client for the code under test.
func do(addr string, args ...string) (any, error) {
	r, err := doAll(addr, args)
	if err != nil {
		return nil, err
	}
	return r[0], nil
}

// doAll sends commands one after another on one connection and returns
// the replies (WAIT counts the writes of its own connection).
func doAll(addr string, cmds ...[]string) ([]any, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(commandTimeout))
	var b strings.Builder
	for _, args := range cmds {
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return nil, err
	}
	rd := bufio.NewReader(c)
	out := make([]any, len(cmds))
	for i := range out {
		if out[i], err = readReply(rd); err != nil {
			return out, err
		}
	}
	return out, nil
}

// doString is do for commands whose reply is a string (or an integer,
// given in decimal).
func doString(addr string, args ...string) (string, error) {
	r, err := do(addr, args...)
	if err != nil {
		return "", err
	}
	switch v := r.(type) {
	case string:
		return v, nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case nil:
		return "", nil
	}
	return "", fmt.Errorf("%s: unexpected reply %v", args[0], r)
}

func readReply(rd *bufio.Reader) (any, error) {
	line, err := rd.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, RedisError(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readReply(rd); err != nil {
				var re RedisError
				if !errors.As(err, &re) {
					return nil, err
				}
				out[i] = re
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// infoField returns field of an INFO reply ("" when absent).
func infoField(info, field string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), field+":"); ok {
			return v
		}
	}
	return ""
}

// waitFor asks cond until it reports done or timeout passes; the last
// error cond gave explains a timeout. The state of another process can
// only be seen by asking it, so this is the one place that polls.
func waitFor(timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		done, err := cond()
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("%s: not within %v: %w", what, timeout, err)
			}
			return fmt.Errorf("%s: not within %v", what, timeout)
		}
		<-tick.C
	}
}
