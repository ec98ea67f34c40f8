//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/gossip"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/lab"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/tunnel"
)

// failoverManifest is the global service "fo" (affinity local: a
// cluster's clients use its own backends while any is healthy) with one
// backend in the cluster it is applied to, on node (empty: anywhere).
func failoverManifest(node string) string {
	nodeName := ""
	if node != "" {
		nodeName = "nodeName: " + node
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: fo
  annotations: {braid.dev/global: "true", braid.dev/affinity: local}
spec:
  selector: {app: fo}
  ports: [{name: whoami, port: 8080, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: fo}
spec:
  replicas: 1
  selector: {matchLabels: {app: fo}}
  template:
    metadata: {labels: {app: fo}}
    spec:
      %s
      containers:
        - name: whoami
          image: traefik/whoami:v1.10
          ports: [{containerPort: 8080}]
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
`, nodeName)
}

// failoverLab is a lab of three clusters × two nodes running "fo": east's
// only backend is on east-0 (the victim), east-1 is the client's node.
type failoverLab struct {
	*labEnv
	north          *lab.Cluster
	victim, client *lab.Node
	clientNS       netns.NsHandle
	vip            netip.AddrPort
	victimPod      string     // east's fo pod
	victimPodIP    netip.Addr // its address
}

func newFailoverLab(t testing.TB, kubeBin string) *failoverLab {
	l, err := lab.Up(context.Background(), lab.Config{Clusters: 3, Nodes: 2, Dir: t.TempDir(), KubeBin: kubeBin, Bin: bin, Progress: t.Logf,
		StrictEncryption: []clustermesh.ClusterName{"north"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("tear down the lab: %v", err)
		}
		checkNoLeftovers(t, l.Run, l.Dir)
	})
	f := &failoverLab{labEnv: &labEnv{Lab: l, east: l.Cluster("east"), west: l.Cluster("west")}, north: l.Cluster("north")}
	f.victim, f.client = f.east.Nodes[0], f.east.Nodes[1]
	for _, c := range l.Clusters {
		node := ""
		if c == f.east {
			node = f.victim.Name
		}
		f.mustKubectl(t, c, strings.NewReader(failoverManifest(node)), "apply", "-f", "-")
	}
	for _, c := range l.Clusters {
		f.mustKubectl(t, c, nil, "rollout", "status", "deployment/fo", "--timeout=180s")
	}
	pods, err := f.east.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=fo"})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Spec.NodeName != f.victim.Name {
		t.Fatalf("east's fo pod: want one on %s: %v %v", f.victim.Name, pods, err)
	}
	f.victimPod = pods.Items[0].Name
	f.victimPodIP = netip.MustParseAddr(pods.Items[0].Status.PodIP)
	f.vip = netip.AddrPortFrom(netip.MustParseAddr(f.serviceIP(t)), 8080)

	// The client runs in the test process, on a thread in east-1's
	// namespace; the process joins east-1's cgroup, where east-1's agent
	// attached its socket load balancer. It leaves the cgroup before the
	// lab is torn down (cleanups run last-in first-out), which kills
	// everything in the lab's cgroups.
	ns, err := netns.GetFromName(f.client.Netns)
	if err != nil {
		t.Fatalf("open netns of %s: %v", f.client.Name, err)
	}
	t.Cleanup(func() { ns.Close() })
	f.clientNS = ns
	bpftest.EnterCgroup(t, f.client.Cgroup)
	return f
}

func (f *failoverLab) serviceIP(t testing.TB) string {
	s, err := f.east.Client.CoreV1().Services("default").Get(context.Background(), "fo", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("east's service fo: %v", err)
	}
	return s.Spec.ClusterIP
}

// ask makes one new connection from east-1 to fo's ClusterIP and returns
// who answered. A connect that gets no answer gives up after dialTimeout.
func (f *failoverLab) ask(dialTimeout time.Duration) (identity, error) {
	var id identity
	err := bpftest.Do(f.clientNS, func() error {
		conn, err := net.DialTimeout("tcp", f.vip.String(), dialTimeout)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: fo\r\nConnection: close\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&id); err != nil || id.Cluster == "" {
			return fmt.Errorf("answer is not an identity: %+v %v", id, err)
		}
		return nil
	})
	return id, err
}

// answeredByVictim waits until n connections in a row are answered by
// east's own backend on the victim.
func (f *failoverLab) answeredByVictim(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, func() error {
		for i := range n {
			id, err := f.ask(time.Second)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			if id.Pod != f.victimPod {
				return fmt.Errorf("connection %d answered by %s/%s, want %s on %s", i, id.Cluster, id.Pod, f.victimPod, f.victim.Name)
			}
		}
		return nil
	})
}

// nodeHealth returns what n's agent's gossip says of node.
func nodeHealth(n *lab.Node, node *lab.Node) (status.NodeHealth, error) {
	snap, err := agentStatus(n)
	if err != nil {
		return status.NodeHealth{}, err
	}
	for _, h := range snap.Nodes {
		if h.Cluster == node.Cluster.Name && h.Node == node.Name {
			return h, nil
		}
	}
	return status.NodeHealth{}, fmt.Errorf("%s's agent does not list %s", n.Name, node.Name)
}

// everyAgentSeesAlive waits until every agent other than node's own sees
// node alive.
func (f *failoverLab) everyAgentSeesAlive(t testing.TB, node *lab.Node, timeout time.Duration) {
	t.Helper()
	for _, c := range f.Clusters {
		for _, n := range c.Nodes {
			if n == node {
				continue
			}
			testenv.Eventually(t, timeout, func() error {
				h, err := nodeHealth(n, node)
				if err != nil {
					return err
				}
				if h.State != string(gossip.Alive) || h.Unreachable {
					return fmt.Errorf("%s's agent sees %s %s", n.Name, node.Name, h.State)
				}
				return nil
			})
		}
	}
}

// cut takes the victim off the mesh as a failed node: its underlay link
// down and its agent killed.
func (f *failoverLab) cut(t testing.TB) {
	t.Helper()
	if err := f.victim.SetUnderlay(false); err != nil {
		t.Fatal(err)
	}
	f.victim.StopAgent(syscall.SIGKILL)
}

// restore brings the victim back: link up, agent started.
func (f *failoverLab) restore(t testing.TB) {
	t.Helper()
	if err := f.victim.SetUnderlay(true); err != nil {
		t.Fatal(err)
	}
	if err := f.victim.StartAgent(); err != nil {
		t.Fatal(err)
	}
}

// recover connects from east-1 until a connection is answered, and returns
// how long after since that took and which cluster answered. Each attempt
// gives up after attempt; the whole wait after timeout.
func (f *failoverLab) recover(since time.Time, attempt, timeout time.Duration) (time.Duration, identity, error) {
	var last error
	for time.Since(since) < timeout {
		id, err := f.ask(attempt)
		if err == nil {
			return time.Since(since), id, nil
		}
		last = err
	}
	return 0, identity{}, fmt.Errorf("no connection from %s answered %v after the cut (last: %w)", "east-1", timeout, last)
}

// cycle cuts the victim off, waits for east-1's connections to be answered
// by another cluster, restores the victim and waits until its backend has
// the traffic back and every agent sees it alive. It returns the time from
// the cut to the first answered connection.
func (f *failoverLab) cycle(t testing.TB) time.Duration {
	t.Helper()
	f.answeredByVictim(t, 3, 60*time.Second)
	cut := time.Now()
	f.cut(t)
	took, id, err := f.recover(cut, 200*time.Millisecond, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if id.Cluster == string(f.east.Name) {
		t.Fatalf("with %s cut off, east-1 was answered by %+v, want another cluster's backend", f.victim.Name, id)
	}
	// Every later connection goes to the nearest healthy tier too.
	for i := range 5 {
		if id, err := f.ask(2 * time.Second); err != nil || id.Cluster == string(f.east.Name) {
			t.Fatalf("connection %d after failover: %+v %v", i, id, err)
		}
	}
	f.restore(t)
	f.answeredByVictim(t, 5, 90*time.Second)
	f.everyAgentSeesAlive(t, f.victim, 60*time.Second)
	return took
}

// TestFailover: three clusters × two nodes; east's only backend of a
// service sits on east-0. Cut off east-0 (link down, agent SIGKILLed):
// east-1's new connections reach another cluster's backend; when east-0
// returns, they return to it. A node whose gossip port alone is blocked is
// marked unreachable, and nothing of its cluster is deleted. Between
// east's two nodes the underlay carries plain traffic, not WireGuard. How
// long failover takes is BenchmarkFailover's business, not this test's.
func TestFailover(t *testing.T) {
	f := newFailoverLab(t, requireLab(t))

	t.Run("AgentsPlacedByTheirNodes", f.testPlacement)
	t.Run("SameClusterBypassesWireGuard", f.testSameClusterPlain)
	t.Run("StrictEncryption", f.testStrict)
	t.Run("CutAndReturn", func(t *testing.T) {
		took := f.cycle(t)
		t.Logf("east-1 was answered by another cluster %v after east-0 was cut off", took.Round(time.Millisecond))
	})
	t.Run("GossipBlocked", f.testGossipBlocked)
	f.failed(t)
}

// testSameClusterPlain: east-1's connections to east-0's backend cross the
// underlay as plain TCP, never WireGuard (only other clusters' nodes are
// WireGuard peers), while east's connections to another cluster cross it
// only inside WireGuard (TestLab's OneSidedServiceOverWireGuard).
func (f *failoverLab) testSameClusterPlain(t *testing.T) {
	f.answeredByVictim(t, 1, 60*time.Second)
	runs, err := lab.Runs(filepath.Dir(f.Dir))
	if err != nil || len(runs) != 1 {
		t.Fatalf("lab runs: %v %v", runs, err)
	}
	cmd := exec.Command("tcpdump", "-i", runs[0].Bridge, "-nn", "-l", "-q", "--immediate-mode",
		// The client's packets go from east-1's address to the pod's;
		// WireGuard's would go between the nodes' addresses.
		fmt.Sprintf("ip and host %s and (host %s or host %s) and not port %d", f.client.IP, f.victim.IP, f.victimPodIP, gossip.DefaultPort))
	c := startTcpdump(t, cmd)
	for range 5 {
		if _, err := f.ask(2 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	lines := c.stop(t)
	tcp, wg := 0, 0
	for _, l := range lines {
		switch {
		case strings.Contains(l, fmt.Sprintf(".%d", tunnel.DefaultListenPort)) && strings.Contains(l, ": UDP,"):
			wg++
		case strings.Contains(l, ": tcp") && strings.Contains(l, fmt.Sprintf("%s.8080", f.victimPodIP)):
			tcp++
		}
	}
	if tcp == 0 || wg != 0 {
		t.Fatalf("between %s and %s: %d plain TCP and %d WireGuard packets, want TCP only:\n%s", f.client.Name, f.victim.Name, tcp, wg, strings.Join(lines, "\n"))
	}
	t.Logf("%s → %s (same cluster): %d plain TCP packets on the underlay, none WireGuard (first: %s)", f.client.Name, f.victim.Name, tcp, lines[0])
}

// testGossipBlocked blocks west-0's gossip port with nftables: east-1's
// agent marks west-0 unreachable, yet keeps west connected and synced,
// every ipcache entry and every WireGuard peer; unblocked, west-0 is alive
// again.
func (f *failoverLab) testGossipBlocked(t *testing.T) {
	blocked := f.west.Nodes[0]
	f.everyAgentSeesAlive(t, blocked, 60*time.Second)
	ipcache, err := ebpf.LoadPinnedMap(filepath.Join(f.client.PinDir, "ipcache"), nil)
	if err != nil {
		t.Fatalf("open %s's ipcache: %v", f.client.Name, err)
	}
	defer ipcache.Close()
	before := countMap(ipcache)
	peersBefore := wgPeers(t, f.client)

	table := "braid-e2e-block"
	nft := func(args ...string) error {
		out, err := exec.Command("nsenter", append([]string{"--net=/run/netns/" + blocked.Netns, "--", "nft"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	rules := fmt.Sprintf(`table inet %[1]s {
	chain in { type filter hook input priority -10; meta l4proto {tcp, udp} th dport %[2]d drop; }
	chain out { type filter hook output priority -10; meta l4proto {tcp, udp} th dport %[2]d drop; }
}`, table, gossip.DefaultPort)
	cmd := exec.Command("nsenter", "--net=/run/netns/"+blocked.Netns, "--", "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("block gossip on %s: %v: %s", blocked.Name, err, out)
	}
	unblock := func() {
		if err := nft("delete", "table", "inet", table); err != nil {
			t.Errorf("unblock gossip: %v", err)
		}
	}
	defer func() {
		if unblock != nil {
			unblock()
		}
	}()

	testenv.Eventually(t, 60*time.Second, func() error {
		h, err := nodeHealth(f.client, blocked)
		if err != nil {
			return err
		}
		if !h.Unreachable {
			return fmt.Errorf("%s still sees %s reachable (%s)", f.client.Name, blocked.Name, h.State)
		}
		return nil
	})
	snap, err := agentStatus(f.client)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range snap.Remotes {
		if r.Name == blocked.Cluster.Name && (r.Gone || !r.Connected || !r.Synced) {
			t.Errorf("with only %s's gossip blocked, %s shows its cluster %+v", blocked.Name, f.client.Name, r)
		}
	}
	if after := countMap(ipcache); after != before {
		t.Errorf("%s's ipcache holds %d entries with %s's gossip blocked, %d before: gossip deleted mesh state", f.client.Name, after, blocked.Name, before)
	}
	if after := wgPeers(t, f.client); !slices.Equal(after, peersBefore) {
		t.Errorf("%s's WireGuard peers changed with %s's gossip blocked: %v, before %v", f.client.Name, blocked.Name, after, peersBefore)
	}
	unblock()
	unblock = nil
	f.everyAgentSeesAlive(t, blocked, 60*time.Second)
}

// countMap counts a BPF map's entries.
func countMap(m *ebpf.Map) int {
	var k, v []byte
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

// wgPeers lists the public keys of n's WireGuard peers, sorted.
func wgPeers(t testing.TB, n *lab.Node) []string {
	t.Helper()
	out, err := exec.Command("wg", "show", n.WireGuard, "peers").CombinedOutput()
	if err != nil {
		t.Fatalf("wg show %s peers: %v: %s", n.WireGuard, err, out)
	}
	peers := strings.Fields(string(out))
	slices.Sort(peers)
	return peers
}

// BenchmarkFailover measures, over 20 cut/return cycles on a lab of three
// clusters × two nodes, the time from cutting off east-0 (link down, agent
// SIGKILLed) until east-1's next new connection to the service is
// answered by another cluster's backend: east-1 connects in a loop, each
// attempt giving up after 200 ms. It reports p50, p99 and max; the goal is
// 2 s. For comparison it logs how long every other agent's gossip took to
// find east-0 unreachable in the same cycle.
//
//	go test -tags e2e -run '^$' -bench Failover -benchtime 1x -timeout 60m ./e2e/
func BenchmarkFailover(b *testing.B) {
	f := newFailoverLab(b, requireLab(b))
	const runs = 20
	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		took = took[:0]
		for r := range runs {
			d := f.cycle(b)
			took = append(took, d)
			b.Logf("cycle %d: east-1 answered by another cluster %v after the cut", r+1, d.Round(time.Millisecond))
		}
	}
	b.StopTimer()
	slices.Sort(took)
	q := func(p float64) time.Duration { return took[min(len(took)-1, int(p*float64(len(took))))] }
	b.ReportMetric(q(0.5).Seconds(), "p50-s")
	b.ReportMetric(q(0.99).Seconds(), "p99-s")
	b.ReportMetric(took[len(took)-1].Seconds(), "max-s")
	b.Logf("recovery times, sorted: %v", took)
}

// testStrict: north's cluster config asks for strict encryption (its
// operator runs with --strict-encryption). Packets from north-0 to east's
// pod, routed around the tunnel onto the underlay, are dropped, and north-0's
// agent counts them; through the tunnel north-0 still reaches the pod.
func (f *failoverLab) testStrict(t *testing.T) {
	n := f.north.Nodes[0]
	ns, err := netns.GetFromName(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	dst := netip.AddrPortFrom(f.victimPodIP, 8080)
	ask := func() error {
		return bpftest.Do(ns, func() error {
			conn, err := net.DialTimeout("tcp", dst.String(), 2*time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
	}
	testenv.Eventually(t, 60*time.Second, ask)
	before, err := strictDropped(n)
	if err != nil {
		t.Fatal(err)
	}
	// The bypass: east's pod straight over the underlay to east-0, in
	// plaintext, as a missing or misrouted tunnel route would send it.
	route := []string{"route", "replace", netip.PrefixFrom(f.victimPodIP, 32).String(), "via", f.victim.IP.String(), "dev", "eth0"}
	if out, err := exec.Command("ip", append([]string{"-n", n.Netns}, route...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", route, err, out)
	}
	routed := true
	unroute := func() {
		if out, err := exec.Command("ip", "-n", n.Netns, "route", "del", netip.PrefixFrom(f.victimPodIP, 32).String()).CombinedOutput(); err != nil {
			t.Errorf("remove the bypass route: %v: %s", err, out)
		}
		routed = false
	}
	defer func() {
		if routed {
			unroute()
		}
	}()
	var after float64
	testenv.Eventually(t, 60*time.Second, func() error {
		if err := bpftest.Do(ns, func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(f.victimPodIP, 9).String())
			if err != nil {
				return err
			}
			defer c.Close()
			// A locally sent packet dropped in postrouting fails with
			// EPERM; the counter below says whether strict mode did it.
			if _, err = c.Write([]byte("plaintext")); errors.Is(err, syscall.EPERM) {
				err = nil
			}
			return err
		}); err != nil {
			return err
		}
		if after, err = strictDropped(n); err != nil {
			return err
		}
		if after <= before {
			return fmt.Errorf("%s's strict drop counter %v, was %v: the plaintext packets were not dropped", n.Name, after, before)
		}
		return nil
	})
	unroute()
	if err := ask(); err != nil {
		t.Fatalf("through the tunnel under strict encryption: %v", err)
	}
	t.Logf("%s dropped plaintext to %v (counter %v → %v) and reaches it through WireGuard", n.Name, f.victimPodIP, before, after)
}

// strictDropped reads n's agent's strict-mode drop counter from /metrics.
func strictDropped(n *lab.Node) (float64, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Get(n.StatusURL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "braid_tunnel_strict_dropped_packets_total "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f, err
		}
	}
	return 0, fmt.Errorf("%s's /metrics has no braid_tunnel_strict_dropped_packets_total", n.Name)
}

// testPlacement: the lab starts agents without --zone or --region; each
// agent found both on its Node object, which the lab node registered with
// the topology labels, through the cluster's kube-apiserver.
func (f *failoverLab) testPlacement(t *testing.T) {
	for _, c := range f.Clusters {
		for _, n := range c.Nodes {
			snap, err := agentStatus(n)
			if err != nil {
				t.Fatal(err)
			}
			if snap.Zone != n.Zone || snap.Region != lab.Region {
				t.Errorf("%s's agent placed itself in zone %q region %q, want %q %q from its Node", n.Name, snap.Zone, snap.Region, n.Zone, lab.Region)
			}
		}
	}
}
