package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// spawner creates network namespaces and starts processes in them from one
// locked OS thread. A child forked from a thread inherits the thread's
// network namespace, and Pdeathsig fires when the forking thread exits: this
// thread lives exactly as long as Run, so pod processes never outlive the
// node process.
type spawner struct {
	reqs chan func()
	done chan struct{}
}

func newSpawner() *spawner {
	return &spawner{reqs: make(chan func()), done: make(chan struct{})}
}

// run serves requests until ctx is done. The goroutine never unlocks its
// thread, so the thread ends with it.
func (s *spawner) run(ctx context.Context) error {
	defer close(s.done)
	runtime.LockOSThread()
	home, err := netns.Get()
	if err != nil {
		return fmt.Errorf("spawner: read own network namespace: %w", err)
	}
	defer home.Close()
	for {
		select {
		case <-ctx.Done():
			return nil
		case fn := <-s.reqs:
			fn()
			// Every request leaves the thread where it found it; if it could
			// not, the thread is unusable and the node must stop.
			if cur, err := netns.Get(); err != nil || !cur.Equal(home) {
				cur.Close()
				return errors.New("spawner: thread left in a foreign network namespace")
			} else {
				cur.Close()
			}
		}
	}
}

// do runs fn on the spawner thread.
func (s *spawner) do(fn func()) error {
	ran := make(chan struct{})
	select {
	case s.reqs <- func() { defer close(ran); fn() }:
	case <-s.done:
		return errors.New("node is stopping")
	}
	<-ran
	return nil
}

// newNetNS creates a network namespace with its loopback up and returns a
// handle to it; the namespace lives while the handle or a process in it does.
func (s *spawner) newNetNS() (netns.NsHandle, error) {
	var h netns.NsHandle
	var err error
	if derr := s.do(func() {
		var home netns.NsHandle
		home, err = netns.Get()
		if err != nil {
			return
		}
		defer home.Close()
		h, err = netns.New() // moves the thread into the new namespace
		if serr := netns.Set(home); serr != nil {
			err = errors.Join(err, fmt.Errorf("return to node namespace: %w", serr))
		}
	}); derr != nil {
		return netns.None(), derr
	}
	if err != nil {
		if h.IsOpen() {
			h.Close()
		}
		return netns.None(), fmt.Errorf("create network namespace: %w", err)
	}
	return h, nil
}

// start starts cmd in network namespace ns and cgroup dir cgroup. The child
// gets SIGKILL if the node process dies, and its own process group (or
// session, for a TTY) so that signals to the node do not reach it.
func (s *spawner) start(cmd *exec.Cmd, ns netns.NsHandle, cgroup string) error {
	cg, err := os.Open(cgroup)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", cgroup, err)
	}
	defer cg.Close()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	if !cmd.SysProcAttr.Setsid {
		cmd.SysProcAttr.Setpgid = true
	}
	if derr := s.do(func() {
		var home netns.NsHandle
		home, err = netns.Get()
		if err != nil {
			return
		}
		defer home.Close()
		if err = netns.Set(ns); err != nil {
			return
		}
		err = cmd.Start()
		if serr := netns.Set(home); serr != nil {
			err = errors.Join(err, fmt.Errorf("return to node namespace: %w", serr))
		}
	}); derr != nil {
		return derr
	}
	return err
}

// Cgroup helpers. The pod's processes live in <parent>/pod-<uid>/<container>;
// exec'd processes join their container's cgroup.

// podCgroupName is the pod's cgroup directory name under Config.CgroupParent.
func podCgroupName(uid string) string { return "pod-" + uid }

// killCgroup kills every process in dir and its descendants, waits until the
// cgroup is empty (bounded by timeout) and removes dir and its children.
// A missing dir is not an error.
func killCgroup(dir string, timeout time.Duration) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kill cgroup %s: %w", dir, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		populated, err := cgroupPopulated(dir)
		if err != nil {
			return err
		}
		if !populated {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still has processes after %v", dir, timeout)
		}
		time.Sleep(5 * time.Millisecond) // the kernel reaps killed processes within milliseconds
	}
	return removeCgroupTree(dir)
}

// cgroupPopulated reports whether dir or a descendant holds a process.
func cgroupPopulated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read cgroup %s: %w", dir, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("cgroup %s: no populated field in cgroup.events", dir)
}

// removeCgroupTree removes dir after its child cgroups (deepest first).
func removeCgroupTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read cgroup %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, removeCgroupTree(filepath.Join(dir, e.Name())))
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
	}
	return errors.Join(errs...)
}
