package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// SandboxCommand is the braid-lab subcommand that runs a lab node's agent
// in its sandbox (ExecSandboxed); `braid-lab sandbox --netns PATH -- BIN
// ARGS...`.
const SandboxCommand = "sandbox"

// sandboxCgroupMount is where the sandbox mounts cgroup2: where a pure
// cgroup v2 node and a container runtime mount it.
const sandboxCgroupMount = "/sys/fs/cgroup"

// sandboxed wraps cmd so that it runs the way a container runtime runs a
// privileged DaemonSet pod with hostNetwork and a private cgroup namespace
// on the node: in the node's network namespace, in the node's cgroup (the
// managed process starts there, see startAgent), at the root of its own
// cgroup namespace, and in its own mount namespace where cgroup2 is
// mounted fresh at /sys/fs/cgroup, so that /proc/self/mountinfo shows the
// node's subtree as the whole hierarchy. Lab nodes share the machine's
// mount namespace; without this an agent finding the cgroup v2 mount by
// itself would attach its socket load balancer to the machine's root and
// serve every node's pods.
func (n *Node) sandboxed(cmd func() (string, []string)) func() (string, []string) {
	return func() (string, []string) {
		bin, args := cmd()
		return filepath.Join(n.Cluster.lab.cfg.Bin, "braid-lab"),
			append([]string{SandboxCommand, "--netns", "/run/netns/" + n.Netns, "--", bin}, args...)
	}
}

// ExecSandboxed replaces the calling process by argv (argv[0] an absolute
// path) inside the sandbox sandboxed describes. The caller must already be
// in the cgroup that becomes the root of the new cgroup namespace (the lab
// starts it there with clone3's CLONE_INTO_CGROUP). Mounts are made slaves
// of the machine's, recursively: new mounts on the host (a pod's network
// namespace, a bpffs) and unmounts still reach the agent, and its cgroup2
// mount stays its own. It returns only on error; it needs root.
func ExecSandboxed(netnsPath string, argv []string) error {
	if len(argv) == 0 || !filepath.IsAbs(argv[0]) {
		return fmt.Errorf("sandbox: want an absolute program path, have %q", argv)
	}
	// Namespaces belong to the thread: set them on this one and exec from
	// it. The thread is never unlocked; the exec replaces the process.
	runtime.LockOSThread()
	ns, err := os.Open(netnsPath)
	if err != nil {
		return fmt.Errorf("sandbox: open network namespace: %w", err)
	}
	err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
	ns.Close()
	if err != nil {
		return fmt.Errorf("sandbox: enter network namespace %s: %w", netnsPath, err)
	}
	if err := unix.Unshare(unix.CLONE_NEWCGROUP | unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("sandbox: unshare cgroup and mount namespaces: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("sandbox: make mounts slaves of the host's: %w", err)
	}
	if err := unix.Mount("cgroup2", sandboxCgroupMount, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RELATIME, ""); err != nil {
		return fmt.Errorf("sandbox: mount cgroup2 at %s: %w", sandboxCgroupMount, err)
	}
	// The cgroup namespace's root is the cgroup the caller was in.
	own, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return fmt.Errorf("sandbox: read own cgroup: %w", err)
	}
	if v2 := unifiedCgroup(string(own)); v2 != "/" {
		return fmt.Errorf("sandbox: own cgroup v2 path is %q, want the root of the new cgroup namespace", v2)
	}
	err = unix.Exec(argv[0], argv, os.Environ())
	return fmt.Errorf("sandbox: exec %s: %w", argv[0], err)
}

// unifiedCgroup returns the cgroup v2 path in a /proc/PID/cgroup table
// (the "0::PATH" line; hybrid machines list v1 hierarchies too), or "".
func unifiedCgroup(table string) string {
	for _, line := range strings.Split(table, "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}
