package lab

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/braidmesh/braid/internal/cgroupv2"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ip runs the ip command.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// createBridge makes the underlay: a bridge in the host namespace holding
// the host address. Nothing routes it further: the host does not forward and
// nodes have no default route.
func createBridge(p *Plan) error {
	if err := ip("link", "add", p.Bridge, "type", "bridge"); err != nil {
		return fmt.Errorf("create underlay: %w", err)
	}
	if err := ip("addr", "add", fmt.Sprintf("%s/%d", p.HostIP, p.Underlay.Bits()), "dev", p.Bridge); err != nil {
		return fmt.Errorf("create underlay: %w", err)
	}
	if err := ip("link", "set", p.Bridge, "up"); err != nil {
		return fmt.Errorf("create underlay: %w", err)
	}
	return nil
}

// createNodeNetns makes a node's network namespace, with a veth into the
// underlay bridge (eth0 inside, holding the node's address) and forwarding
// on, as on a Kubernetes node.
func createNodeNetns(p *Plan, n *NodePlan) error {
	steps := [][]string{
		{"netns", "add", n.Netns},
		{"-n", n.Netns, "link", "set", "lo", "up"},
		{"link", "add", n.HostVeth, "type", "veth", "peer", "name", "eth0", "netns", n.Netns},
		{"link", "set", n.HostVeth, "master", p.Bridge},
		{"link", "set", n.HostVeth, "up"},
		{"-n", n.Netns, "addr", "add", fmt.Sprintf("%s/%d", n.IP, p.Underlay.Bits()), "dev", "eth0"},
		{"-n", n.Netns, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
	}
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
		out, err := exec.Command("ip", "netns", "exec", n.Netns, "sysctl", "-qw", kv).CombinedOutput()
		if err != nil {
			return fmt.Errorf("create node %s: sysctl %s: %w: %s", n.Name, kv, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// cgroup2Root returns where the cgroup v2 hierarchy is mounted, from
// /proc/self/mountinfo.
func cgroup2Root() (string, error) {
	m, err := cgroupv2.Find()
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w (mount one: mount -t cgroup2 none /sys/fs/cgroup)", err)
	}
	return m.Point, nil
}

// removeCgroup kills every process in the cgroup tree at dir and removes it,
// deepest first. A missing dir is not an error.
func removeCgroup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	// cgroup.kill (Linux 5.14) kills the whole subtree at once.
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		for _, d := range dirs {
			killProcs(d)
		}
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := syscall.Rmdir(d)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
				break
			}
			killProcs(d)
			time.Sleep(20 * time.Millisecond) // the kernel empties the cgroup asynchronously after SIGKILL
		}
	}
	return errors.Join(errs...)
}

func killProcs(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// linkExists reports whether a network interface named name exists in the
// host namespace.
func linkExists(name string) bool { return exists("/sys/class/net/" + name) }

// SetUnderlay takes n's link into the underlay down or brings it back up
// (the host side of its veth: both ends lose carrier), so a test can cut a
// node off the mesh and return it. n keeps its addresses and routes.
func (n *Node) SetUnderlay(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	if err := ip("link", "set", n.plan.HostVeth, state); err != nil {
		return fmt.Errorf("node %s: set underlay %s: %w", n.Name, state, err)
	}
	return nil
}

// freeLoopbackPort returns a TCP port free on 127.0.0.1 now.
func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
