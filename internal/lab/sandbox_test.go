package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/internal/cgroupv2"
	"github.com/braidmesh/braid/internal/lab/proc"
)

// sandboxChildEnv makes the test binary play `braid-lab sandbox`: its value
// is the network namespace path, and the program it execs is a shell that
// reports what the sandboxed process sees.
const sandboxChildEnv = "BRAID_LAB_TEST_SANDBOX_NETNS"

// sandboxReport is the shell the sandbox execs in the test: its cgroup
// table, its mount table and its network namespace, and a child cgroup
// made through its own cgroup2 mount.
const sandboxReport = `cat /proc/self/cgroup; echo ---; cat /proc/self/mountinfo; echo ---; readlink /proc/self/ns/net; mkdir /sys/fs/cgroup/made-inside`

func TestMain(m *testing.M) {
	if ns := os.Getenv(sandboxChildEnv); ns != "" {
		err := ExecSandboxed(ns, []string{"/bin/sh", "-c", sandboxReport})
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// TestSandbox: a process started in a node's cgroup through the sandbox
// sees that cgroup as its whole cgroup v2 hierarchy (cgroup namespace root,
// fresh cgroup2 mount at /sys/fs/cgroup, the one cgroupv2.Parse picks) and
// runs in the node's network namespace, which is what an agent needs to
// find its node's cgroup without --cgroup.
func TestSandbox(t *testing.T) {
	bpftest.RequireRoot(t)
	cg := bpftest.Cgroup(t)
	ns := bpftest.NetNS(t)
	t.Cleanup(func() { os.Remove(filepath.Join(cg, "made-inside")) })
	nsPath := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "sandbox.log")
	p, err := proc.StartInCgroup("sandbox", log, cg, append(os.Environ(), sandboxChildEnv+"="+nsPath), self)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Err(); err != nil {
		t.Fatalf("sandboxed process: %v\n%s", err, proc.TailFile(log, 20))
	}
	out, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(out), "---\n")
	if len(parts) != 3 {
		t.Fatalf("sandboxed process reported %d parts, want 3:\n%s", len(parts), out)
	}
	if got := unifiedCgroup(parts[0]); got != "/" {
		t.Errorf("sandboxed process's cgroup v2 path is %q, want / (the root of its cgroup namespace)", got)
	}
	mounts, err := cgroupv2.Parse(strings.NewReader(parts[1]))
	if err != nil {
		t.Fatalf("sandboxed process's mount table: %v", err)
	}
	if want := (cgroupv2.Mount{Point: "/sys/fs/cgroup", Root: "/"}); mounts[0] != want {
		t.Errorf("sandboxed process's cgroup v2 mount is %+v, want %+v (of %+v)", mounts[0], want, mounts)
	}
	if want := fmt.Sprintf("net:[%d]", st.Ino); strings.TrimSpace(parts[2]) != want {
		t.Errorf("sandboxed process's network namespace is %q, want %s", strings.TrimSpace(parts[2]), want)
	}
	// What it made through its own mount is below the node's cgroup.
	if _, err := os.Stat(filepath.Join(cg, "made-inside", "cgroup.procs")); err != nil {
		t.Errorf("a cgroup made at the sandbox's /sys/fs/cgroup is not below the node's cgroup %s: %v", cg, err)
	}
}
