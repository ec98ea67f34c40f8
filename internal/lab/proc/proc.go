// Package proc runs the lab's child processes: each with its output appended
// to a log file, killed by the kernel if the lab process dies, and stopped
// with SIGTERM, then SIGKILL after a grace period.
//
// Start forks every child from one locked OS thread that lives as long as the
// process, because Pdeathsig fires when the forking thread exits, not the
// process: Go ends threads whose goroutine exits while locked (as netns
// helpers do), which would kill children at random.
//
// A Process is safe for concurrent use; Stop is idempotent and waits.
package proc

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// DefaultGrace is how long Stop waits after SIGTERM before SIGKILL.
const DefaultGrace = 5 * time.Second

// Process is a running child.
type Process struct {
	Name string // for messages: "east/kube-apiserver"
	Log  string // path of the log file

	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result; read only after done is closed
	once sync.Once
}

// Start runs bin with args; stdout and stderr are appended to logPath. env,
// if not nil, replaces the environment.
func Start(name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	return StartInCgroup(name, logPath, "", env, bin, args...)
}

// StartInCgroup is Start with the child placed in the cgroup v2 directory
// cgroup from its first instruction (clone3's CLONE_INTO_CGROUP), as a
// container runtime places a container's process; "" leaves it in the
// lab's own cgroup.
func StartInCgroup(name, logPath, cgroup string, env []string, bin string, args ...string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	// Its own process group, so a Ctrl-C on the terminal reaches only the
	// lab, which stops its children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if cgroup != "" {
		cg, err := os.Open(cgroup)
		if err != nil {
			return nil, fmt.Errorf("start %s: open cgroup: %w", name, err)
		}
		defer cg.Close() // needed only until the fork
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	}
	if err := fork(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

var (
	forkOnce sync.Once
	forkReqs chan forkReq
)

type forkReq struct {
	cmd *exec.Cmd
	err chan<- error
}

func fork(cmd *exec.Cmd) error {
	forkOnce.Do(func() {
		forkReqs = make(chan forkReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range forkReqs {
				r.err <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	forkReqs <- forkReq{cmd: cmd, err: errc}
	return <-errc
}

// Pid is the child's process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the process's exit error; valid once Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process (no-op once it has exited).
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM, waits up to grace (DefaultGrace if zero), then kills
// the process, and waits for it. Calling it again is a no-op.
func (p *Process) Stop(grace time.Duration) {
	if grace <= 0 {
		grace = DefaultGrace
	}
	p.once.Do(func() {
		if p.Exited() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// Tail returns the last n lines of the process's log.
func (p *Process) Tail(n int) string { return TailFile(p.Log, n) }

// TailFile returns the last n lines of the file at path, after the last
// maxErrorLines error lines before them (see isErrorLine), if any: a
// process that logs why it fails and then goes on logging has its reason
// out of the tail.
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	var errs [][]byte
	if len(lines) > n {
		for _, l := range lines[:len(lines)-n] {
			if isErrorLine(l) {
				errs = append(errs, l)
			}
		}
		lines = lines[len(lines)-n:]
	}
	tail := string(bytes.Join(lines, []byte("\n")))
	if len(errs) == 0 {
		return tail
	}
	if len(errs) > maxErrorLines {
		errs = errs[len(errs)-maxErrorLines:]
	}
	return fmt.Sprintf("(earlier error lines)\n%s\n(last %d lines)\n%s", bytes.Join(errs, []byte("\n")), n, tail)
}

const maxErrorLines = 10

// isErrorLine reports whether l is an error as the lab's processes log
// them: klog's E and F lines (E1204 18:05:05.321018 ...), slog's
// level=ERROR, a Go panic or fatal error.
func isErrorLine(l []byte) bool {
	if len(l) > 5 && (l[0] == 'E' || l[0] == 'F') && isDigits(l[1:5]) {
		return true
	}
	return bytes.Contains(l, []byte("level=ERROR")) || bytes.HasPrefix(l, []byte("panic: ")) || bytes.HasPrefix(l, []byte("fatal error: "))
}

func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
