package node

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/reconcile"
)

// Restart back-off as in the kubelet: about 10 s doubling up to 5 min (with
// jitter), reset after a container ran for backoffReset.
const (
	backoffInitial = 10 * time.Second
	backoffMax     = 5 * time.Minute
	backoffReset   = 10 * time.Minute
)

// containerKind says how a container is run.
type containerKind int

const (
	kindRegular containerKind = iota
	kindInit                  // runs to completion before the regular ones
	kindSidecar               // an init container with restartPolicy Always
)

// container is one container of a pod: its process, restarts and status.
type container struct {
	w      *podWorker
	spec   corev1.Container
	kind   containerKind
	cgroup string
	logDir string

	kill chan struct{} // a probe asks for a restart (cap 1)

	mu       sync.Mutex
	id       string
	state    corev1.ContainerState
	last     corev1.ContainerState
	restarts int32
	ready    bool
	started  bool
	final    bool // exited and will not be restarted
	exitCode int32
	proc     *os.Process
	logPath  string // log of the current (or last) run
	prevLog  string // log of the run before
	running  chan struct{}
}

func newContainer(w *podWorker, spec corev1.Container, kind containerKind) *container {
	return &container{
		w:       w,
		spec:    spec,
		kind:    kind,
		cgroup:  filepath.Join(w.sb.cgroup, spec.Name),
		logDir:  filepath.Join(w.sb.dir, "logs", spec.Name),
		kill:    make(chan struct{}, 1),
		state:   corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}},
		running: make(chan struct{}),
	}
}

// restartPolicy is how this container restarts.
func (c *container) restartPolicy() corev1.RestartPolicy {
	switch c.kind {
	case kindSidecar:
		return corev1.RestartPolicyAlways
	case kindInit:
		if c.w.spec().Spec.RestartPolicy == corev1.RestartPolicyNever {
			return corev1.RestartPolicyNever
		}
		return corev1.RestartPolicyOnFailure
	}
	return c.w.spec().Spec.RestartPolicy
}

// supervise runs the container until ctx is done or it exits for good,
// restarting it per its restart policy. It returns when the container's last
// process has exited.
func (c *container) supervise(ctx context.Context) {
	backoff := reconcile.NewBackoff(backoffInitial, backoffMax)
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			wait := backoff.Next()
			c.setWaiting("CrashLoopBackOff", fmt.Sprintf("back-off %v restarting failed container=%s pod=%s", wait.Round(time.Second), c.spec.Name, c.w.podName()))
			if !reconcile.Wait(ctx, wait) {
				c.setTerminatedFinal()
				return
			}
		}
		startedAt := time.Now()
		exitCode, err := c.runOnce(ctx)
		if err != nil {
			c.w.log.Warn("start container", "container", c.spec.Name, "err", err)
			exitCode = 128
			c.mu.Lock()
			c.exitCode = exitCode
			c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: exitCode, Reason: "StartError", Message: err.Error(),
				StartedAt: metav1.NewTime(startedAt), FinishedAt: metav1.Now(),
			}}
			c.last = c.state
			c.mu.Unlock()
			c.w.statusChanged()
		}
		if ctx.Err() != nil {
			c.mu.Lock()
			c.final = true
			c.mu.Unlock()
			c.w.statusChanged()
			return
		}
		restart := false
		switch c.restartPolicy() {
		case corev1.RestartPolicyAlways:
			restart = true
		case corev1.RestartPolicyOnFailure:
			restart = exitCode != 0
		}
		if !restart {
			c.mu.Lock()
			c.final = true
			c.mu.Unlock()
			c.w.statusChanged()
			return
		}
		if time.Since(startedAt) > backoffReset {
			backoff.Reset()
		}
		c.mu.Lock()
		c.restarts++
		c.mu.Unlock()
	}
}

// runOnce starts the container's process, runs its probes and waits for it
// to exit, stopping it when ctx is done or a probe asks. It returns the exit
// code.
func (c *container) runOnce(ctx context.Context) (int32, error) {
	proc, logDone, err := c.start(ctx)
	if err != nil {
		return 0, err
	}
	startedAt := time.Now()
	pctx, stopProbes := context.WithCancel(ctx)
	var probes sync.WaitGroup
	c.startProbes(pctx, &probes)

	exited := make(chan *os.ProcessState, 1)
	go func() {
		st, _ := proc.Wait()
		exited <- st
	}()
	var st *os.ProcessState
	select {
	case st = <-exited:
	case <-ctx.Done():
		st = c.terminate(proc, exited, c.w.stopGrace())
	case <-c.kill:
		st = c.terminate(proc, exited, c.w.terminationGrace())
	}
	stopProbes()
	probes.Wait()
	// As when a container's PID 1 exits: everything else in it dies too.
	if err := os.WriteFile(filepath.Join(c.cgroup, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.w.log.Warn("kill rest of container", "container", c.spec.Name, "err", err)
	}
	<-logDone

	code := int32(-1)
	if st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int32(ws.Signal())
		} else {
			code = int32(st.ExitCode())
		}
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	c.w.log.Info("container exited", "container", c.spec.Name, "code", code)
	c.mu.Lock()
	c.proc = nil
	c.ready = false
	c.started = false
	c.exitCode = code
	c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode:    code,
		Reason:      reason,
		StartedAt:   metav1.NewTime(startedAt),
		FinishedAt:  metav1.Now(),
		ContainerID: c.id,
	}}
	c.last = c.state
	c.mu.Unlock()
	c.w.statusChanged()
	return code, nil
}

// terminate sends SIGTERM to the container's main process and, after grace,
// kills everything in its cgroup; it returns the main process's state.
func (c *container) terminate(proc *os.Process, exited <-chan *os.ProcessState, grace time.Duration) *os.ProcessState {
	c.w.log.Info("stopping container", "container", c.spec.Name, "grace", grace)
	if err := proc.Signal(syscall.SIGTERM); err != nil {
		return <-exited
	}
	select {
	case st := <-exited:
		return st
	case <-time.After(grace):
	}
	c.w.log.Info("killing container after its grace period", "container", c.spec.Name, "grace", grace)
	if err := os.WriteFile(filepath.Join(c.cgroup, "cgroup.kill"), []byte("1"), 0); err != nil {
		_ = proc.Kill()
	}
	return <-exited
}

// start starts one run of the container: its program, or the stand-in.
// logDone is closed when its output has been written to the log.
func (c *container) start(ctx context.Context) (*os.Process, <-chan struct{}, error) {
	pod := c.w.spec()
	env, err := c.w.n.containerEnv(ctx, pod, &c.spec, c.w.sb.ip.String())
	if err != nil {
		return nil, nil, err
	}
	argv := c.w.n.argv(pod, &c.spec, env, c.w.sb)
	if err := os.MkdirAll(c.cgroup, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create container cgroup: %w", err)
	}
	if err := os.MkdirAll(c.logDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create log dir: %w", err)
	}
	c.mu.Lock()
	restarts := c.restarts
	c.mu.Unlock()
	logPath := filepath.Join(c.logDir, strconv.Itoa(int(restarts))+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("create log: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		logFile.Close()
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = envList(env)
	cmd.Dir = workingDir(c.spec.WorkingDir, c.w.sb.dir)
	cmd.Stdout, cmd.Stderr = outW, errW
	err = c.w.n.spawn.start(cmd, c.w.sb.ns, c.cgroup)
	outW.Close()
	errW.Close()
	if err != nil {
		logFile.Close()
		outR.Close()
		errR.Close()
		return nil, nil, fmt.Errorf("run %s: %w", argv[0], err)
	}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		defer logFile.Close()
		var mu sync.Mutex
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); copyCRILog(logFile, &mu, outR, "stdout") }()
		go func() { defer wg.Done(); copyCRILog(logFile, &mu, errR, "stderr") }()
		wg.Wait()
		outR.Close()
		errR.Close()
	}()

	id := newContainerID()
	c.mu.Lock()
	c.id = id
	c.proc = cmd.Process
	c.prevLog, c.logPath = c.logPath, logPath
	c.started = c.spec.StartupProbe == nil
	c.ready = false
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	select {
	case <-c.running:
	default:
		close(c.running)
	}
	c.mu.Unlock()
	c.w.log.Info("container started", "container", c.spec.Name, "pid", cmd.Process.Pid, "argv", argv)
	c.w.statusChanged()
	return cmd.Process, logDone, nil
}

func workingDir(want, fallback string) string {
	if want != "" {
		if st, err := os.Stat(want); err == nil && st.IsDir() {
			return want
		}
	}
	return fallback
}

func newContainerID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "braidlab://" + hex.EncodeToString(b[:])
}

func (c *container) restartCount() int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restarts
}

func (c *container) setWaiting(reason, msg string) {
	c.mu.Lock()
	c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	c.mu.Unlock()
	c.w.statusChanged()
}

// setTerminatedFinal records that a container waiting for a restart will not
// run again (the pod is stopping).
func (c *container) setTerminatedFinal() {
	c.mu.Lock()
	c.final = true
	if c.last.Terminated != nil {
		c.state = c.last
	}
	c.mu.Unlock()
	c.w.statusChanged()
}

// copyCRILog copies r to w in the CRI log format the kubelet reads:
// "<RFC3339Nano time> <stream> <F|P> <text>\n", P marking a partial line.
func copyCRILog(w io.Writer, mu *sync.Mutex, r io.Reader, stream string) {
	br := bufio.NewReaderSize(r, 16*1024)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			tag := "P"
			if line[len(line)-1] == '\n' {
				tag = "F"
				line = line[:len(line)-1]
			}
			mu.Lock()
			fmt.Fprintf(w, "%s %s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), stream, tag, line)
			mu.Unlock()
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}
