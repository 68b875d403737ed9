package chaos

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/postern/postern/internal/store/redisstore/redistest"
)

// Build compiles postern into dir and returns the binary's path.
func Build(dir string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(dir, "postern")
	out, err := exec.Command(goBin, "build", "-o", bin, "github.com/postern/postern/cmd/postern").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// Pause stalls srv for d (SIGSTOP, then SIGCONT), as a Redis that stops
// answering does: its connections stay open, commands queue up.
func Pause(srv *redistest.Server, d time.Duration) error {
	if err := srv.Pause(); err != nil {
		return err
	}
	time.Sleep(d) // the stall itself is the fault: its length is the point
	return srv.Resume()
}
