package kubelab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/testenv"
)

// StartTimeout bounds how long StartEtcd and StartCluster wait for a process
// to become ready. It is generous because the lab machines are shared.
const StartTimeout = 90 * time.Second

// stopGrace is how long a process has to exit after SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// maxAttempts is how often a process is started again when the free port it
// was given was taken before it could bind it.
const maxAttempts = 3

// process is a child process whose combined output goes to a log file.
type process struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd.Wait has returned
	err  error         // cmd.Wait's result; read only after done is closed
	once sync.Once
}

// startProcess starts bin with args, its output appended to logPath.
func startProcess(name, logPath, bin string, args ...string) (*process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := forkFromStableThread(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pdeathsig fires when the *thread* that forked the child exits, and Go ends
// threads whose goroutine exits while locked to them (as netns helpers do).
// Forking from one locked goroutine that never exits makes the signal mean
// "the test binary died", which is what it is for: a test that times out
// skips its cleanups, and its apiservers must not outlive it.
var (
	forkOnce sync.Once
	forkReqs chan forkReq
)

type forkReq struct {
	cmd *exec.Cmd
	err chan<- error
}

func forkFromStableThread(cmd *exec.Cmd) error {
	forkOnce.Do(func() {
		forkReqs = make(chan forkReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the process
			for r := range forkReqs {
				r.err <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	forkReqs <- forkReq{cmd: cmd, err: errc}
	return <-errc
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process and waits for it; calling it again is a no-op.
func (p *process) stop() {
	p.once.Do(func() {
		if p.exited() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopGrace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// tail returns the last n lines of the process's log.
func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", p.log, err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// portClash reports whether the process died because its port was taken.
func (p *process) portClash() bool {
	return p.exited() && strings.Contains(p.tail(50), "address already in use")
}

// cleanup registers stopping p at the end of t, logging p's output if t failed.
func (p *process) cleanup(t testing.TB) {
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("kubelab: last lines of %s (%s):\n%s", p.name, p.log, p.tail(40))
		}
	})
}

// waitReady polls ready until it succeeds, p exits, or StartTimeout passes.
func waitReady(p *process, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		last = ready(rctx)
		rcancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %w", p.name, StartTimeout, last)
		case <-p.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startReady starts a process on fresh free ports and waits until it is
// ready, starting it again if another process took one of its ports first.
// args receives the ports; nports is how many it needs.
func startReady(t testing.TB, name, logPath, bin string, nports int, args func(ports []int) []string, ready func(ctx context.Context, ports []int) error) (*process, []int) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		ports := make([]int, nports)
		for i := range ports {
			ports[i] = testenv.FreePort(t)
		}
		p, err := startProcess(name, logPath, bin, args(ports)...)
		if err != nil {
			t.Fatalf("kubelab: %v", err)
		}
		err = waitReady(p, func(ctx context.Context) error { return ready(ctx, ports) })
		if err == nil {
			p.cleanup(t)
			return p, ports
		}
		p.stop()
		if attempt < maxAttempts && p.portClash() {
			continue
		}
		t.Fatalf("kubelab: %v; last lines of %s:\n%s", err, logPath, p.tail(40))
	}
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

var errNotReady = errors.New("not ready")
