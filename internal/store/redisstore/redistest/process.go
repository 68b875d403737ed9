package redistest

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one running redis-server or redis-sentinel process.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has exited
	log    *tail
}

// spawn starts program with args in dir and waits until it logs ready.
// The process is killed with the test binary (setDeathSignal).
func spawn(program string, args []string, dir, ready string) (*proc, error) {
	cmd := exec.Command(program, args...)
	cmd.Dir = dir
	setDeathSignal(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", program, err)
	}
	readyCh := make(chan struct{})
	p := &proc{cmd: cmd, exited: make(chan struct{}), log: &tail{}}
	go func() {
		sc := bufio.NewScanner(out)
		var once sync.Once
		for sc.Scan() {
			line := sc.Text()
			p.log.add(line)
			if strings.Contains(line, ready) {
				once.Do(func() { close(readyCh) })
			}
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
		close(p.exited)
	}()
	t := time.NewTimer(StartTimeout)
	defer t.Stop()
	select {
	case <-readyCh:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s exited at start: %s", program, p.log)
	case <-t.C:
		cmd.Process.Kill()
		<-p.exited
		return nil, fmt.Errorf("%s did not get ready within %v: %s", program, StartTimeout, p.log)
	}
}

// stop signals the process and waits for it to exit.
func (p *proc) stop(sig syscall.Signal) {
	p.cmd.Process.Signal(sig)
	<-p.exited
}

// tail keeps the last lines of a process's log, for failure messages.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (l *tail) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
	if len(l.lines) > 20 {
		l.lines = l.lines[1:]
	}
}

func (l *tail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, " | ")
}
