//go:build e2e

package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/clustermesh/sim"
	"github.com/braidmesh/braid/internal/testenv"
)

// labNode is one cluster's single node: a node namespace holding the
// WireGuard device, and a pod namespace behind it.
type labNode struct {
	cluster clustermesh.ClusterConfig
	node    string // node name
	ns, pod string // namespace names
	nodeIP  netip.Addr
	podCIDR netip.Prefix
	podIP   netip.Addr
	vip     netip.Addr
	cgroup  string
	dir     string
	state   string // operator state file
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func nsHandle(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestServiceAcrossClustersOverWireGuard runs the whole system: a broker,
// an operator and an agent per cluster as separate processes, nodes and pods
// in network namespaces. A pod in east connects to east's VIP of a global
// service whose only backend is a pod in west: the agent's socket load
// balancer picks west's backend and the traffic crosses the underlay inside
// WireGuard.
func TestServiceAcrossClustersOverWireGuard(t *testing.T) {
	bpftest.RequireRoot(t)
	testenv.LookPath(t, "ip", "iproute2")
	testenv.LookPath(t, "wg", "wireguard-tools")
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	sfx := hex.EncodeToString(rnd[:])
	dir := t.TempDir()

	nodes := []*labNode{
		{cluster: clustermesh.ClusterConfig{Name: "east", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("172.21.0.0/16")}},
			node: "east-1", nodeIP: netip.MustParseAddr("192.168.77.1"), podCIDR: netip.MustParsePrefix("10.1.0.0/24"),
			podIP: netip.MustParseAddr("10.1.0.2"), vip: netip.MustParseAddr("172.21.0.10")},
		{cluster: clustermesh.ClusterConfig{Name: "west", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("172.22.0.0/16")}},
			node: "west-1", nodeIP: netip.MustParseAddr("192.168.77.2"), podCIDR: netip.MustParsePrefix("10.2.0.0/24"),
			podIP: netip.MustParseAddr("10.2.0.2"), vip: netip.MustParseAddr("172.22.0.10")},
	}
	east, west := nodes[0], nodes[1]
	for _, n := range nodes {
		n.ns = fmt.Sprintf("bre-%s-%s", sfx, n.cluster.Name)
		n.pod = n.ns + "-pod"
		n.dir = filepath.Join(dir, string(n.cluster.Name))
		if err := os.MkdirAll(n.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, ns := range []string{n.ns, n.pod} {
			sh(t, "ip", "netns", "add", ns)
			t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
			sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
		}
		gw := n.podCIDR.Addr().Next()
		sh(t, "ip", "link", "add", "p"+sfx, "netns", n.ns, "type", "veth", "peer", "name", "eth0", "netns", n.pod)
		sh(t, "ip", "-n", n.ns, "addr", "add", netip.PrefixFrom(gw, 24).String(), "dev", "p"+sfx)
		sh(t, "ip", "-n", n.ns, "link", "set", "p"+sfx, "up")
		sh(t, "ip", "-n", n.pod, "addr", "add", netip.PrefixFrom(n.podIP, 24).String(), "dev", "eth0")
		sh(t, "ip", "-n", n.pod, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", n.pod, "route", "add", "default", "via", gw.String())
		sh(t, "ip", "netns", "exec", n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0")
		n.cgroup = bpftest.Cgroup(t)
	}
	// The underlay: one link between the two nodes.
	sh(t, "ip", "link", "add", "u"+sfx, "netns", east.ns, "type", "veth", "peer", "name", "u"+sfx, "netns", west.ns)
	for _, n := range nodes {
		sh(t, "ip", "-n", n.ns, "addr", "add", netip.PrefixFrom(n.nodeIP, 24).String(), "dev", "u"+sfx)
		sh(t, "ip", "-n", n.ns, "link", "set", "u"+sfx, "up")
	}

	// The backend: a pod in west answering with its cluster's name.
	bpftest.Serve(t, nsHandle(t, west.pod), "west", bpftest.BackendPort)

	// Broker, operators, agents.
	clientPort, peerPort := testenv.FreePort(t), testenv.FreePort(t)
	endpoint := url(clientPort)
	brokerDir := filepath.Join(dir, "broker")
	start(t, "braid", "broker", "--data-dir", brokerDir, "--listen", endpoint, "--listen-peer", url(peerPort), "--log-level", "warn")
	var agents []*proc
	for _, n := range nodes {
		join := filepath.Join(n.dir, "join.json")
		testenv.Eventually(t, 30*time.Second, func() error {
			_, err := execOut("braid", "broker", "add-cluster", string(n.cluster.Name), "--data-dir", brokerDir, "--etcd-endpoints", endpoint, "--out", join,
				"--cluster-id", strconv.Itoa(int(n.cluster.ID)), "--pod-cidr", n.cluster.PodCIDRs[0].String(), "--service-cidr", n.cluster.ServiceCIDRs[0].String())
			return err
		})
		n.state = filepath.Join(n.dir, "state.json")
		writeState(t, n, "")
		start(t, "braid-operator", "--join", join, "--cluster-id", strconv.Itoa(int(n.cluster.ID)),
			"--pod-cidr", n.cluster.PodCIDRs[0].String(), "--service-cidr", n.cluster.ServiceCIDRs[0].String(),
			"--state-file", n.state, "--status-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "--log-level", "warn")
		status := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		agents = append(agents, start(t, "braid-agent", "--join", join, "--node", n.node, "--zone", "zone-a", "--node-ip", n.nodeIP.String(),
			"--bpf-pin-dir", bpftest.PinDir(t), "--cgroup", n.cgroup, "--socket-lb-host-only=false", "--pod-devices=off",
			"--wireguard-device", "bw"+sfx+string(n.cluster.Name[0]), "--wireguard-netns", "/run/netns/"+n.ns,
			"--state-dir", filepath.Join(n.dir, "agent"), "--status-addr", status, "--log-level", "warn"))
	}
	// Each agent writes its public key; the operator publishes it with the
	// node, as it would from the Node object in Kubernetes.
	for _, n := range nodes {
		var key string
		testenv.Eventually(t, 30*time.Second, func() error {
			b, err := os.ReadFile(filepath.Join(n.dir, "agent", agent.PublicKeyFile))
			key = strings.TrimSpace(string(b))
			return err
		})
		writeState(t, n, key)
	}

	// A pod in east, in the agent's cgroup, connects to east's VIP.
	bpftest.EnterCgroup(t, east.cgroup)
	vip := netip.AddrPortFrom(east.vip, 80)
	epod := nsHandle(t, east.pod)
	testenv.Eventually(t, 60*time.Second, func() error {
		name, peer, err := bpftest.Ask(epod, "tcp", vip)
		if err != nil {
			return fmt.Errorf("connect %v from east's pod: %w", vip, err)
		}
		if name != "west" || peer != vip {
			return fmt.Errorf("answered by %q seen as %v, want west's backend seen as %v", name, peer, vip)
		}
		return nil
	})
	for i := range 20 {
		if name, _, err := bpftest.Ask(epod, "tcp", vip); err != nil || name != "west" {
			t.Fatalf("connection %d: %q %v", i, name, err)
		}
	}
	// It crossed the underlay through WireGuard: the device moved bytes
	// to and from west's node.
	out, err := exec.Command("ip", "netns", "exec", east.ns, "wg", "show", "bw"+sfx+"e", "transfer").CombinedOutput()
	if err != nil {
		t.Fatalf("wg show: %v\n%s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 3 || fields[1] == "0" || fields[2] == "0" {
		t.Fatalf("wg show transfer = %q, want one peer with bytes both ways", out)
	}
	t.Logf("east → west over WireGuard: %s bytes received, %s sent", fields[1], fields[2])

	// Restarting east's agent drops no established connection: the BPF
	// maps and links are pinned, the WireGuard key is kept, and TCP rides
	// out the moment the device is re-created.
	var conn net.Conn
	if err := bpftest.Do(epod, func() (err error) {
		conn, err = net.DialTimeout("tcp", vip.String(), 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	echo := func(msg string) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(conn, msg+"\n"); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		line, err := r.ReadString('\n')
		if err != nil || line != msg+"\n" {
			t.Fatalf("echo of %q: %q, %v", msg, line, err)
		}
	}
	if line, err := r.ReadString('\n'); err != nil || line != "west\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	echo("before restart")
	restarted := time.Now()
	agents[0].restart(t, syscall.SIGTERM)
	echo("after restart")
	t.Logf("established connection survived the agent restart; echo answered %v after it began", time.Since(restarted).Round(time.Millisecond))
	testenv.Eventually(t, 30*time.Second, func() error {
		name, _, err := bpftest.Ask(epod, "tcp", vip)
		if err != nil || name != "west" {
			return fmt.Errorf("new connection after restart: %q %v", name, err)
		}
		return nil
	})
}

// writeState writes n's simulated cluster: its node (with the agent's
// WireGuard key once known), its pod, and the global service "web", backed
// by the pod in west only.
func writeState(t *testing.T, n *labNode, wgKey string) {
	t.Helper()
	first, _ := n.cluster.IdentityRange()
	app := "client"
	if n.cluster.Name == "west" {
		app = "web"
	}
	s := sim.State{
		Nodes:      []clustermesh.Node{{Name: n.node, IPs: []netip.Addr{n.nodeIP}, PodCIDRs: []netip.Prefix{n.podCIDR}, Zone: "zone-a", WireGuardKey: wgKey}},
		Identities: []clustermesh.Identity{{ID: first, Labels: map[string]string{"app": app}}},
		IPs:        []clustermesh.IPEntry{{Prefix: netip.PrefixFrom(n.podIP, 32), Identity: first, HostIP: n.nodeIP}},
		Services: []clustermesh.Service{{Namespace: "default", Name: "web", Global: true, Shared: true, Affinity: clustermesh.AffinityNone,
			ClusterIPs: []netip.Addr{n.vip}, Ports: []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}}}},
	}
	if n.cluster.Name == "west" {
		s.Services[0].Backends = []clustermesh.Backend{{IP: n.podIP, Ports: []clustermesh.BackendPort{{Name: "http", Port: bpftest.BackendPort}},
			Node: n.node, Zone: "zone-a", Ready: true, Serving: true}}
	}
	if err := sim.WriteStateFile(n.state, s); err != nil {
		t.Fatal(err)
	}
}
