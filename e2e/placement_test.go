//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/braidmesh/braid/internal/cgroupv2"
	"github.com/braidmesh/braid/internal/lab"
)

// testAgentsFindTheirNode: the lab starts every agent as its DaemonSet
// starts it, without a zone, region, node IP, interface or cgroup flag, in
// a sandbox like a pod's with a private cgroup namespace (lab.ExecSandboxed).
// Each agent placed itself from its Node object through its cluster's
// kube-apiserver, and attached its socket load balancer, found through its
// own cgroup2 mount, to its node's cgroup: not to the lab's or the
// machine's root, which would serve every other node's pods too.
func (e *labEnv) testAgentsFindTheirNode(t *testing.T) {
	host, err := cgroupv2.Find()
	if err != nil {
		t.Fatal(err)
	}
	owner := map[ebpf.ProgramID]string{} // connect4 program → node
	for _, c := range e.Clusters {
		for _, n := range c.Nodes {
			pid := n.AgentPID()
			if pid == 0 {
				t.Fatalf("%s: agent not running", n.Name)
			}
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil {
				t.Fatal(err)
			}
			args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
			if !strings.HasSuffix(args[0], "braid-agent") {
				t.Fatalf("%s: process %d is %q, not the agent", n.Name, pid, args)
			}
			for _, a := range args {
				for _, flag := range []string{"--zone", "--region", "--node-ip", "--interface", "--pod-devices", "--cgroup"} {
					if a == flag || strings.HasPrefix(a, flag+"=") {
						t.Errorf("%s: the lab passes the agent %s", n.Name, a)
					}
				}
			}

			// In the node's cgroup, and (as the host sees it) its own
			// cgroup2 mount at /sys/fs/cgroup shows the node's subtree.
			table, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if err != nil {
				t.Fatal(err)
			}
			if dir, err := host.Dir(unifiedCgroup(string(table))); err != nil || dir != n.Cgroup {
				t.Errorf("%s: agent in cgroup %q (%v), want the node's %s", n.Name, dir, err, n.Cgroup)
			}
			mi, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
			if err != nil {
				t.Fatal(err)
			}
			mounts, err := cgroupv2.Parse(mi)
			mi.Close()
			if err != nil {
				t.Fatalf("%s: agent's mounts: %v", n.Name, err)
			}
			if dir, err := host.Dir(mounts[0].Root); err != nil || mounts[0].Point != "/sys/fs/cgroup" || dir != n.Cgroup {
				t.Errorf("%s: agent's cgroup v2 mount %+v (%s, %v), want /sys/fs/cgroup showing the node's %s", n.Name, mounts[0], dir, err, n.Cgroup)
			}

			// Its socket load balancer is on the node's cgroup itself.
			progs := connect4(t, n.Cgroup)
			if len(progs) == 0 {
				t.Errorf("%s: no connect4 program attached to the node's cgroup %s", n.Name, n.Cgroup)
			}
			for _, p := range progs {
				if other, ok := owner[p]; ok {
					t.Errorf("%s: connect4 program %d is %s's too", n.Name, p, other)
				}
				owner[p] = n.Name
			}

			snap, err := agentStatus(n)
			if err != nil {
				t.Fatal(err)
			}
			if snap.Zone != n.Zone || snap.Region != lab.Region {
				t.Errorf("%s's agent placed itself in zone %q region %q, want %q %q from its Node", n.Name, snap.Zone, snap.Region, n.Zone, lab.Region)
			}
		}
	}
	// None of them above the nodes.
	for _, dir := range []string{filepath.Dir(e.Clusters[0].Nodes[0].Cgroup), host.Point} {
		for _, p := range connect4(t, dir) {
			if n, ok := owner[p]; ok {
				t.Errorf("%s's connect4 program %d is attached to %s, above the nodes", n, p, dir)
			}
		}
	}
	t.Logf("%d agents, each in its node's cgroup with its socket load balancer there: %v", len(owner), owner)
}

// connect4 returns the connect4 programs attached to the cgroup dir itself.
func connect4(t *testing.T, dir string) []ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil {
		t.Fatalf("query connect4 programs on %s: %v", dir, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return slices.Clip(ids)
}

// unifiedCgroup returns the cgroup v2 path in a /proc/PID/cgroup table.
func unifiedCgroup(table string) string {
	for _, line := range strings.Split(table, "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}
