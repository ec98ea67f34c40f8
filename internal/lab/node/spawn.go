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

// podNamespaces are a pod's network and UTS namespaces.
type podNamespaces struct {
	net netns.NsHandle // lives while the handle or a process in it does
	uts *os.File       // the UTS namespace, whose hostname is the pod's
	// resolvConf, if set, is the pod's resolv.conf: every process starts
	// through `<exe> node mountns`, in a mount namespace of its own where
	// the file is bind-mounted on /etc/resolv.conf.
	resolvConf string
	exe        string // this executable, for mountns
}

func (p *podNamespaces) close() {
	if p.net.IsOpen() {
		p.net.Close()
		p.net = netns.None()
	}
	if p.uts != nil {
		p.uts.Close()
		p.uts = nil
	}
}

// newPodNamespaces creates a network namespace (loopback down), or with
// hostNet takes the node's own, and a UTS namespace with the given hostname.
func (s *spawner) newPodNamespaces(hostname string, hostNet bool) (*podNamespaces, error) {
	ns := &podNamespaces{net: netns.None()}
	var err error
	if derr := s.do(func() {
		var home netns.NsHandle
		var homeUTS *os.File
		if home, err = netns.Get(); err != nil {
			return
		}
		defer home.Close()
		if homeUTS, err = os.Open("/proc/thread-self/ns/uts"); err != nil {
			return
		}
		defer homeUTS.Close()
		defer func() { // the thread goes home whatever happened
			if serr := netns.Set(home); serr != nil {
				err = errors.Join(err, fmt.Errorf("return to node network namespace: %w", serr))
			}
			if serr := unix.Setns(int(homeUTS.Fd()), unix.CLONE_NEWUTS); serr != nil {
				err = errors.Join(err, fmt.Errorf("return to node UTS namespace: %w", serr))
			}
		}()
		if hostNet {
			ns.net, err = netns.Get()
		} else {
			ns.net, err = netns.New() // moves the thread in
		}
		if err != nil {
			return
		}
		if err = unix.Unshare(unix.CLONE_NEWUTS); err != nil {
			return
		}
		if err = unix.Sethostname([]byte(hostname)); err != nil {
			return
		}
		ns.uts, err = os.Open("/proc/thread-self/ns/uts")
	}); derr != nil {
		return nil, derr
	}
	if err != nil {
		ns.close()
		return nil, fmt.Errorf("create pod namespaces: %w", err)
	}
	return ns, nil
}

// start starts cmd in the pod namespaces ns and cgroup dir cgroup. The child
// gets SIGKILL if the node process dies, and its own process group (or
// session, for a TTY) so that signals to the node do not reach it.
func (s *spawner) start(cmd *exec.Cmd, ns *podNamespaces, cgroup string) error {
	cg, err := os.Open(cgroup)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", cgroup, err)
	}
	defer cg.Close()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if ns.resolvConf != "" {
		// Unshareflags runs in the forked child before exec: the wrapper
		// starts alone in a new mount namespace (made private by Go), binds
		// the pod's resolv.conf there and execs the command.
		path, err := exec.LookPath(cmd.Path)
		if err != nil && !filepath.IsAbs(cmd.Path) {
			path = cmd.Path
		}
		args := append([]string{ns.exe, "node", "mountns", "--resolv-conf", ns.resolvConf, "--", path}, cmd.Args[1:]...)
		cmd.Path, cmd.Args, cmd.Err = ns.exe, args, nil
		cmd.SysProcAttr.Unshareflags |= syscall.CLONE_NEWNS
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	if !cmd.SysProcAttr.Setsid {
		cmd.SysProcAttr.Setpgid = true
	}
	if derr := s.do(func() {
		var home netns.NsHandle
		var homeUTS *os.File
		if home, err = netns.Get(); err != nil {
			return
		}
		defer home.Close()
		if homeUTS, err = os.Open("/proc/thread-self/ns/uts"); err != nil {
			return
		}
		defer homeUTS.Close()
		defer func() {
			if serr := netns.Set(home); serr != nil {
				err = errors.Join(err, fmt.Errorf("return to node network namespace: %w", serr))
			}
			if serr := unix.Setns(int(homeUTS.Fd()), unix.CLONE_NEWUTS); serr != nil {
				err = errors.Join(err, fmt.Errorf("return to node UTS namespace: %w", serr))
			}
		}()
		if err = netns.Set(ns.net); err != nil {
			return
		}
		if err = unix.Setns(int(ns.uts.Fd()), unix.CLONE_NEWUTS); err != nil {
			return
		}
		err = cmd.Start()
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
	if err := waitCgroupEmpty(dir, timeout); err != nil {
		return err
	}
	return removeCgroupTree(dir)
}

// waitCgroupEmpty waits until no process is left in dir or its descendants:
// the kernel reports a change of cgroup.events' "populated" as a
// modification of the file.
func waitCgroupEmpty(dir string, timeout time.Duration) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("watch cgroup %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, filepath.Join(dir, "cgroup.events"), unix.IN_MODIFY); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("watch cgroup %s: %w", dir, err)
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 4096)
	for {
		populated, err := cgroupPopulated(dir)
		if err != nil || !populated {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("cgroup %s still has processes after %v", dir, timeout)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("watch cgroup %s: %w", dir, err)
		}
		_, _ = unix.Read(fd, buf) // drain; the loop re-reads the file
	}
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
