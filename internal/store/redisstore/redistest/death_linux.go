package redistest

import (
	"os/exec"
	"syscall"
)

// setDeathSignal kills the server when the test binary dies, so a test
// killed by its timeout leaves no redis-server behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
