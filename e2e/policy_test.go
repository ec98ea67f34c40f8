//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/clustermesh/policy/policytest"
	"github.com/braidmesh/braid/internal/lab"
	"github.com/braidmesh/braid/internal/netnsrun"
	"github.com/braidmesh/braid/internal/testenv"
)

// policyLab is policytest's world on the lab: its pods run in the lab's
// clusters (east's spread over east's two nodes, west's over west's), its
// addresses outside the mesh are lab outside hosts, and east's policies are
// applied to east's kube-apiserver.
type policyLab struct {
	l    *lab.Lab
	eps  []policytest.Endpoint
	addr map[string]netip.Addr        // endpoint name -> its address on the lab
	ns   map[string]netns.NsHandle    // endpoint name -> its network namespace
	node map[string]*lab.Node         // pod endpoint name -> its node
	host map[*lab.Node]netns.NsHandle // node -> its own namespace (the host)
	// readySince is when each pod last turned ready, before any scenario.
	readySince map[string]metav1.Time
	// applied are the clusters holding policies.
	applied map[*lab.Cluster]bool
}

// Probe timing: a probe expected to be dropped waits deniedWait for an
// answer; one expected to pass gets allowedAttempts tries with growing
// timeouts, so a loaded machine cannot fail it. probeParallel bounds the
// probes in flight.
const (
	deniedWait      = time.Second
	allowedWait     = 2 * time.Second
	allowedAttempts = 3
	probeParallel   = 64
)

// TestPolicyMatrix is issue 14's acceptance matrix: on one lab of two
// clusters × two nodes, with pods in three namespaces of both clusters and
// two hosts outside the mesh, every policytest scenario (the
// NetworkPolicy documentation's examples, its edge cases and cross-cluster
// selectors) is applied in turn to the kube-apiserver of its cluster (east,
// or west for west's own policies; the other cluster's are removed); once
// every agent of that cluster reports the policy set enforced, TCP and UDP
// probes run between every pair of endpoints, and every cell must match
// the scenario's table. The node's own host reaches its pods in every
// scenario (the kubelet's probes: the pods' readiness probes keep passing
// too). On the same lab, an agent killed and restarted keeps enforcing
// (testAgentRestart), and established connections survive a namespace
// relabel but not a policy that denies them (testEstablished).
func TestPolicyMatrix(t *testing.T) {
	kubeBin := requireLab(t)
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Config{Clusters: 2, Nodes: 2, Dir: t.TempDir(), KubeBin: kubeBin, Bin: bin, Progress: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("tear down the lab: %v", err)
		}
		checkNoLeftovers(t, l.Run, filepath.Dir(l.Dir))
	})
	m := newPolicyLab(t, l)
	// A process that failed to start under load was restarted already;
	// from here no policy change may make any exit.
	started := len(l.UnexpectedExits())
	east, west := l.Cluster(string(policytest.Local)), l.Cluster(string(policytest.Remote))
	for _, sc := range policytest.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			want, err := sc.Verdicts()
			if err != nil {
				t.Fatal(err)
			}
			m.applyOnly(t, l.Cluster(string(sc.Enforcer())), sc.Policies)
			m.probeAll(t, want, nil)
			if sc.Name == "default deny ingress in a" {
				m.checkDropsShown(t, "A", "a/deny-ingress")
			}
		})
	}
	t.Run("agent restart", m.testAgentRestart)
	t.Run("established flows", m.testEstablished)
	m.apply(t, east, nil)
	m.apply(t, west, nil)
	m.checkReady(t)
	(&labEnv{Lab: l}).failed(t)
	if exits := l.UnexpectedExits()[started:]; len(exits) > 0 {
		t.Errorf("%d unexpected exits of lab processes during the scenarios:\n%s", len(exits), strings.Join(exits, "\n---\n"))
	}
}

func newPolicyLab(t testing.TB, l *lab.Lab) *policyLab {
	ctx := context.Background()
	m := &policyLab{l: l, eps: policytest.Endpoints(), addr: map[string]netip.Addr{}, ns: map[string]netns.NsHandle{},
		node: map[string]*lab.Node{}, host: map[*lab.Node]netns.NsHandle{}, readySince: map[string]metav1.Time{}, applied: map[*lab.Cluster]bool{}}
	t.Cleanup(func() {
		for _, h := range m.ns {
			h.Close()
		}
		for _, h := range m.host {
			h.Close()
		}
	})
	for _, c := range l.Clusters {
		for _, ns := range []string{"a", "b", "c"} {
			_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: policytest.NamespaceLabels(ns)}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("cluster %s: create namespace %s: %v", c.Name, ns, err)
			}
		}
		for _, n := range c.Nodes {
			h, err := netns.GetFromName(n.Netns)
			if err != nil {
				t.Fatalf("node %s's namespace: %v", n.Name, err)
			}
			m.host[n] = h
		}
	}
	placed := map[*lab.Cluster]int{}
	for _, e := range m.eps {
		if e.Cluster == "" {
			continue
		}
		c := l.Cluster(string(e.Cluster))
		n := c.Nodes[placed[c]%len(c.Nodes)]
		placed[c]++
		m.node[e.Name] = n
		if _, err := c.Client.CoreV1().Pods(e.Namespace).Create(ctx, policyPod(e, n.Name), metav1.CreateOptions{}); err != nil {
			t.Fatalf("cluster %s: create pod for %s: %v", c.Name, e.Name, err)
		}
	}
	for _, e := range m.eps {
		if e.Cluster == "" {
			continue
		}
		c := l.Cluster(string(e.Cluster))
		var pod *corev1.Pod
		testenv.Eventually(t, 2*time.Minute, func() (err error) {
			pod, err = c.Client.CoreV1().Pods(e.Namespace).Get(ctx, podName(e), metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !podReady(pod) || pod.Status.PodIP == "" {
				return fmt.Errorf("cluster %s: pod %s/%s not ready with an IP yet (phase %s)", c.Name, pod.Namespace, pod.Name, pod.Status.Phase)
			}
			return nil
		})
		m.addr[e.Name] = netip.MustParseAddr(pod.Status.PodIP)
		m.readySince[e.Name] = readyCondition(pod).LastTransitionTime
		h, err := podNetns(m.node[e.Name], string(pod.UID))
		if err != nil {
			t.Fatalf("%s: %v", e.Name, err)
		}
		m.ns[e.Name] = h
	}
	for _, e := range m.eps {
		if e.Cluster != "" {
			continue
		}
		o, err := l.AddOutside(ctx, e.Name, e.Addr)
		if err != nil {
			t.Fatal(err)
		}
		h, err := netns.GetFromName(o.Netns)
		if err != nil {
			t.Fatalf("outside host %s's namespace: %v", e.Name, err)
		}
		m.ns[e.Name], m.addr[e.Name] = h, e.Addr
		serveOutside(t, h, e.Name)
	}
	var names []string
	for _, e := range m.eps {
		where := "outside the mesh"
		if n := m.node[e.Name]; n != nil {
			where = "on " + n.Name
		}
		names = append(names, fmt.Sprintf("%s=%s (%s)", e.Name, m.addr[e.Name], where))
	}
	t.Logf("endpoints: %s", strings.Join(names, ", "))

	// Every agent has every pod in its ipcache before the first scenario
	// (the first scenario, all allowed, then proves the paths).
	pods := len(m.node)
	for _, c := range l.Clusters {
		for _, n := range c.Nodes {
			testenv.Eventually(t, time.Minute, func() error {
				st, err := agentStatus(n)
				if err != nil {
					return err
				}
				for _, mp := range st.Maps {
					if mp.Name == "ipcache" && mp.Entries >= pods {
						return nil
					}
				}
				return fmt.Errorf("node %s: ipcache not yet holding the %d pods: %+v", n.Name, pods, st.Maps)
			})
		}
	}
	return m
}

// grepLines returns the lines of s that contain substr.
func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func podName(e policytest.Endpoint) string { return "pod-" + strings.ToLower(e.Name) }

// policyPod is e's pod on node: it serves TCP 80 and 8080 and UDP 53 (the
// lab node's stand-in answers on every container port), with e's named
// ports, and a readiness probe the node's host runs.
func policyPod(e policytest.Endpoint, node string) *corev1.Pod {
	ports := []corev1.ContainerPort{{ContainerPort: 80, Protocol: corev1.ProtocolTCP}, {ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {ContainerPort: 53, Protocol: corev1.ProtocolUDP}}
	for i := range ports {
		for _, np := range e.Ports {
			if int32(np.Port) == ports[i].ContainerPort && string(np.Protocol) == string(ports[i].Protocol) {
				ports[i].Name = np.Name
			}
		}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName(e), Namespace: e.Namespace, Labels: e.Labels},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "server", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53", Ports: ports,
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1, FailureThreshold: 1},
			}},
		},
	}
}

func readyCondition(p *corev1.Pod) corev1.PodCondition {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c
		}
	}
	return corev1.PodCondition{}
}

func podReady(p *corev1.Pod) bool { return readyCondition(p).Status == corev1.ConditionTrue }

// podNetns opens the network namespace of a process of pod uid on n.
func podNetns(n *lab.Node, uid string) (netns.NsHandle, error) {
	dir := filepath.Join(n.Cgroup, "pod-"+uid)
	var pid string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || pid != "" || d.Name() != "cgroup.procs" {
			return nil
		}
		if b, err := os.ReadFile(path); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				pid = f[0]
			}
		}
		return nil
	})
	if pid == "" {
		return netns.None(), fmt.Errorf("no process in pod cgroup %s", dir)
	}
	h, err := netns.GetFromPath("/proc/" + pid + "/ns/net")
	if err != nil {
		return netns.None(), fmt.Errorf("pod %s's network namespace: %w", uid, err)
	}
	return h, nil
}

// serveOutside serves what the pods serve (HTTP on TCP 80 and 8080, a UDP
// answer on 53) in the outside host's namespace until the test ends.
func serveOutside(t testing.TB, ns netns.NsHandle, name string) {
	var tcp []net.Listener
	var udp net.PacketConn
	err := netnsrun.Do(ns, func() error {
		for _, port := range []string{":80", ":8080"} {
			ln, err := net.Listen("tcp", port)
			if err != nil {
				return err
			}
			tcp = append(tcp, ln)
		}
		var err error
		udp, err = net.ListenPacket("udp", ":53")
		return err
	})
	if err != nil {
		t.Fatalf("outside host %s: listen: %v", name, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, name) }), ReadHeaderTimeout: 5 * time.Second}
	var wg sync.WaitGroup
	for _, ln := range tcp {
		wg.Go(func() { _ = srv.Serve(ln) })
	}
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = udp.WriteTo([]byte(name+"\n"), from)
		}
	})
	t.Cleanup(func() {
		srv.Close() // closes the listeners: Serve returns
		udp.Close()
		wg.Wait()
	})
}

// applyOnly applies pols to cluster c and removes every other cluster's
// policies (those it applied before).
func (m *policyLab) applyOnly(t testing.TB, c *lab.Cluster, pols []*networkingv1.NetworkPolicy) {
	t.Helper()
	for o := range m.applied {
		if o != c {
			m.apply(t, o, nil)
		}
	}
	m.apply(t, c, pols)
}

// apply replaces every NetworkPolicy of cluster c by pols and waits until
// every agent of c reports the new set compiled and enforced.
func (m *policyLab) apply(t testing.TB, c *lab.Cluster, pols []*networkingv1.NetworkPolicy) {
	t.Helper()
	delete(m.applied, c)
	if len(pols) > 0 {
		m.applied[c] = true
	}
	ctx := context.Background()
	api := c.Client.NetworkingV1()
	for _, ns := range []string{"a", "b", "c"} {
		if err := api.NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatalf("cluster %s: delete the policies of namespace %s: %v", c.Name, ns, err)
		}
	}
	for _, p := range pols {
		p = p.DeepCopy()
		p.ResourceVersion = ""
		if _, err := api.NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("cluster %s: create policy %s/%s: %v", c.Name, p.Namespace, p.Name, err)
		}
	}
	list, err := api.NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != len(pols) {
		t.Fatalf("cluster %s holds %d policies, want %d", c.Name, len(list.Items), len(pols))
	}
	var have []*networkingv1.NetworkPolicy
	for i := range list.Items {
		have = append(have, &list.Items[i])
	}
	rev := agent.PolicyRevision(have)
	for _, n := range c.Nodes {
		testenv.Eventually(t, time.Minute, func() error {
			st, err := agentStatus(n)
			if err != nil {
				return err
			}
			switch p := st.Policy; {
			case p == nil || !p.Synced:
				return fmt.Errorf("node %s: policies not synced yet", n.Name)
			case p.Revision != rev:
				return fmt.Errorf("node %s: compiled policy revision %s, want %s", n.Name, p.Revision, rev)
			case p.Enforced != rev:
				return fmt.Errorf("node %s: datapath enforces policy revision %s, want %s", n.Name, p.Enforced, rev)
			}
			return nil
		})
	}
}

// probe connects from ns to to over p and waits up to timeout for an
// answer: an HTTP status line over TCP, a datagram over UDP.
func probe(ns netns.NsHandle, p policytest.Probe, to netip.Addr, timeout time.Duration) error {
	network := strings.ToLower(string(p.Protocol))
	var c net.Conn
	err := netnsrun.Do(ns, func() (err error) {
		c, err = net.DialTimeout(network, netip.AddrPortFrom(to, p.Port).String(), timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := c.Write([]byte("?")); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		_, err := c.Read(buf)
		return err
	}
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", to); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "HTTP/1.") {
		return fmt.Errorf("answer %q is not HTTP", line)
	}
	return nil
}

// verdict probes and reports whether the connection answered; a probe
// expected to pass is retried before it counts as dropped.
func verdict(ns netns.NsHandle, p policytest.Probe, to netip.Addr, expectAllowed bool) (bool, error) {
	if !expectAllowed {
		err := probe(ns, p, to, deniedWait)
		return err == nil, err
	}
	var err error
	for i := range allowedAttempts {
		if err = probe(ns, p, to, allowedWait<<i); err == nil {
			return true, nil
		}
	}
	return false, err
}

// probeAll probes every cell of want, and every pod from its node's host,
// in parallel, and fails t for every cell that differs. With only set, it
// probes only the cells between endpoints only accepts (a host stands for
// its node's pods).
func (m *policyLab) probeAll(t *testing.T, want map[[2]string][]bool, only func(policytest.Endpoint) bool) {
	t.Helper()
	if only == nil {
		only = func(policytest.Endpoint) bool { return true }
	}
	type cell struct {
		from, to string
		ns       netns.NsHandle
		addr     netip.Addr
		probe    int
		want     bool
	}
	var cells []cell
	for _, src := range m.eps {
		for _, dst := range m.eps {
			if src.Name == dst.Name || !only(src) || !only(dst) {
				continue
			}
			v, ok := want[[2]string{src.Name, dst.Name}]
			if !ok {
				t.Fatalf("the table has no cell %s -> %s", src.Name, dst.Name)
			}
			for i := range policytest.Probes {
				cells = append(cells, cell{src.Name, dst.Name, m.ns[src.Name], m.addr[dst.Name], i, v[i]})
			}
		}
	}
	for _, dst := range m.eps {
		if n := m.node[dst.Name]; n != nil && only(dst) {
			for i := range policytest.Probes {
				cells = append(cells, cell{"host(" + n.Name + ")", dst.Name, m.host[n], m.addr[dst.Name], i, true})
			}
		}
	}
	var mu sync.Mutex
	var wrong []string
	sem := make(chan struct{}, probeParallel)
	var wg sync.WaitGroup
	for _, c := range cells {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			p := policytest.Probes[c.probe]
			got, err := verdict(c.ns, p, c.addr, c.want)
			if got != c.want {
				mu.Lock()
				wrong = append(wrong, fmt.Sprintf("%s -> %s %s: connected=%v (%v), want %v", c.from, c.to, p, got, err, c.want))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(wrong)
	for _, w := range wrong {
		t.Error(w)
	}
	t.Logf("%d probes, %d wrong", len(cells), len(wrong))
}

// checkReady: every pod stayed ready (its Ready condition never changed)
// and never restarted through every scenario: its node's readiness probes
// were never dropped.
func (m *policyLab) checkReady(t *testing.T) {
	ctx := context.Background()
	for _, e := range m.eps {
		if e.Cluster == "" {
			continue
		}
		c := m.l.Cluster(string(e.Cluster))
		pod, err := c.Client.CoreV1().Pods(e.Namespace).Get(ctx, podName(e), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		since := m.readySince[e.Name]
		if rc := readyCondition(pod); rc.Status != corev1.ConditionTrue || !rc.LastTransitionTime.Equal(&since) {
			t.Errorf("%s: pod %s/%s's Ready condition is %s since %v, want true since %v (before the scenarios)", e.Name, pod.Namespace, pod.Name, rc.Status, rc.LastTransitionTime, since)
		}
		for _, cs := range pod.Status.ContainerStatuses {
			if cs.RestartCount > 0 {
				t.Errorf("%s: container %s restarted %d times", e.Name, cs.Name, cs.RestartCount)
			}
		}
	}
}

// checkDropsShown: the status of the agent of pod ep's node, its
// /metrics, and `braid status` reading it, attribute the drops into ep to
// policy (as the probe matrix just caused them: from every other endpoint,
// west's pods among them) and show the last drops with their source
// cluster.
func (m *policyLab) checkDropsShown(t *testing.T, ep, policy string) {
	t.Helper()
	n := m.node[ep]
	testenv.Eventually(t, 30*time.Second, func() error {
		st, err := agentStatus(n)
		if err != nil {
			return err
		}
		if st.Policy == nil {
			return fmt.Errorf("node %s reports no policy", n.Name)
		}
		dropped := false
		for _, d := range st.Policy.Drops {
			dropped = dropped || d.Policy == policy && d.Direction == "ingress" && d.Reason == "policy" && d.Packets > 0
		}
		if !dropped {
			return fmt.Errorf("node %s: no ingress drops attributed to %s yet: %+v", n.Name, policy, st.Policy.Drops)
		}
		selected := false
		for _, id := range st.Policy.Identities {
			selected = selected || id.Namespace == "a" && slices.Contains(id.Ingress, policy) && id.Dropped > 0
		}
		if !selected {
			return fmt.Errorf("node %s: no identity of namespace a selected by %s with drops: %+v", n.Name, policy, st.Policy.Identities)
		}
		fromWest := false
		for _, d := range st.Policy.RecentDrops {
			fromWest = fromWest || d.SourceCluster == "west" && d.DestinationCluster == "east" && strings.HasPrefix(d.To, m.addr[ep].String()+":")
		}
		if !fromWest {
			return fmt.Errorf("node %s: no recent drop from west into %s: %+v", n.Name, ep, st.Policy.RecentDrops)
		}
		// Per policy on /metrics too.
		metrics, err := scrapeMetrics(n.StatusURL)
		if err != nil {
			return err
		}
		series := regexp.MustCompile(`(?m)^braid_policy_drops_total\{direction="ingress",policy="` + regexp.QuoteMeta(policy) + `",reason="policy"\} [1-9]`)
		if !series.MatchString(metrics) {
			return fmt.Errorf("node %s's /metrics lack ingress drops of %s:\n%s", n.Name, policy, grepLines(metrics, "braid_policy_drops_total"))
		}
		// The same, as braid status prints it (it exits 1 if the node
		// reports any problem; the output is what is checked).
		out, _ := exec.Command(filepath.Join(bin, "braid"), "status", "--url", n.StatusURL).CombinedOutput()
		for _, want := range []string{`network policy: synced, 1 policies, \d+ rules, revision \w+ enforced`, regexp.QuoteMeta(policy) + `\s+ingress\s+policy\s+[1-9]`, `\d+ \(west\)\s+10\.101\.`} {
			if !regexp.MustCompile(want).Match(out) {
				return fmt.Errorf("braid status --url %s lacks %s:\n%s", n.StatusURL, want, out)
			}
		}
		return nil
	})
}
