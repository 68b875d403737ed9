package splice

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	supported = true
	// pipeBytes is the pipe's size asked for, and the most one splice
	// call moves, as in net.TCPConn.ReadFrom (and the default of
	// /proc/sys/fs/pipe-max-size).
	pipeBytes = 1 << 20
	// freePipes bounds the empty pipes kept for the next copies.
	freePipes = 16
)

// pipe is a pipe whose ends are both non-blocking; held is how many
// bytes it holds.
type pipe struct {
	r, w int
	held int
}

var free = make(chan *pipe, freePipes)

func getPipe() (*pipe, error) {
	select {
	case p := <-free:
		return p, nil
	default:
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeBytes) // a smaller pipe works too
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe keeps an empty pipe for the next copy, or closes it.
func putPipe(p *pipe) {
	if p.held == 0 {
		select {
		case free <- p:
			return
		default:
		}
	}
	unix.Close(p.r)
	unix.Close(p.w)
}

// unpaced is the congestion control of sockets unpace switches: reno,
// which every process may choose and which does not ask the kernel to
// pace.
const unpaced = "reno"

// unpace switches the socket c to unpaced (see the package comment), as
// best it can: a socket it cannot switch is spliced to as it is.
func unpace(c syscall.RawConn) {
	c.Control(func(fd uintptr) {
		unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, unpaced)
	})
}

// rawSplice moves up to n bytes from in to out without blocking, as a
// raw system call (see the package comment).
func rawSplice(in, out, n int) (int, syscall.Errno) {
	for {
		k, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if e != unix.EINTR {
			return int(k), e
		}
	}
}

// pump moves n bytes (fewer if src ends first) from src to dst through a
// pipe: a splice from src fills it with what src holds (up to
// pipeBytes), splices to dst empty it; each waits on the runtime's poller
// while its socket is not ready, within the socket's deadline.
func pump(dst, src syscall.RawConn, n int64) (written int64, err error) {
	p, err := getPipe()
	if err != nil {
		return 0, err
	}
	defer putPipe(p)
	var errno syscall.Errno
	ended := false
	fill := func(fd uintptr) bool {
		k, e := rawSplice(int(fd), p.w, int(min(n-written, pipeBytes)))
		switch {
		case e == unix.EAGAIN:
			return false // wait until src is readable
		case e != 0:
			errno = e
		case k == 0:
			ended = true
		default:
			p.held = k
		}
		return true
	}
	drain := func(fd uintptr) bool {
		for p.held > 0 {
			k, e := rawSplice(p.r, int(fd), p.held)
			if e == unix.EAGAIN {
				return false // wait until dst has room
			}
			if e != 0 {
				errno = e
				return true
			}
			p.held -= k
			written += int64(k)
			moved.Add(int64(k))
		}
		return true
	}
	for written < n {
		if err := src.Read(fill); err != nil {
			return written, err
		}
		if errno != 0 {
			return written, os.NewSyscallError("splice", errno)
		}
		if ended {
			return written, nil
		}
		if err := dst.Write(drain); err != nil {
			return written, err
		}
		if errno != 0 {
			return written, os.NewSyscallError("splice", errno)
		}
	}
	return written, nil
}
