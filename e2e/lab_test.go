//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"github.com/braidmesh/braid/clustermesh/gossip"
	"github.com/braidmesh/braid/internal/testenv"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/cgroupv2"
	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/lab"
	"github.com/braidmesh/braid/internal/lab/node"
)

// requireLab skips (or, where CI sets BRAID_KUBE_REQUIRED, fails) unless
// this machine can run the lab, and returns the Kubernetes binaries.
func requireLab(t testing.TB) string {
	t.Helper()
	kubeBin := kubelab.Require(t)
	testenv.Root(t, "the lab: network namespaces, cgroups, BPF")
	for _, tool := range []string{"ip", "nsenter", "curl", "tcpdump", "wg", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skipf(t, "%s not installed (tools/lab/prepare.sh installs what the lab needs)", tool)
		}
	}
	return kubeBin
}

// labEnv is a running lab with the examples applied to every cluster.
type labEnv struct {
	*lab.Lab
	east, west *lab.Cluster
}

func (e *labEnv) kubectl(t testing.TB, c *lab.Cluster, stdin io.Reader, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(e.KubeBin, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s (%s): %w: %s", strings.Join(args, " "), c.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (e *labEnv) mustKubectl(t testing.TB, c *lab.Cluster, stdin io.Reader, args ...string) string {
	t.Helper()
	out, err := e.kubectl(t, c, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// vip returns a service's ClusterIP in cluster c.
func (e *labEnv) vip(t *testing.T, c *lab.Cluster, svc string) string {
	t.Helper()
	s, err := c.Client.CoreV1().Services("default").Get(context.Background(), svc, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("cluster %s: service %s: %v", c.Name, svc, err)
	}
	return s.Spec.ClusterIP
}

// identity is what the examples' whoami port answers.
type identity struct {
	Pod, Node, Cluster string
}

// call runs curl in c's client pod against url and decodes the answer.
func (e *labEnv) call(t *testing.T, c *lab.Cluster, url string) (identity, error) {
	t.Helper()
	out, err := e.kubectl(t, c, nil, "exec", "deploy/client", "--", "curl", "-s", "--max-time", "2", url)
	if err != nil {
		return identity{}, err
	}
	var id identity
	if err := json.Unmarshal([]byte(out), &id); err != nil || id.Cluster == "" {
		return identity{}, fmt.Errorf("answer %q is not an identity: %v", out, err)
	}
	return id, nil
}

// failed fails t if a lab process exited unexpectedly.
func (e *labEnv) failed(t testing.TB) {
	t.Helper()
	select {
	case err := <-e.Failed():
		t.Fatalf("a lab process failed: %v", err)
	default:
	}
}

// noExits fails t if any lab process exited without being asked to (and
// was restarted under the lab's restart policy).
func (e *labEnv) noExits(t *testing.T) {
	t.Helper()
	if exits := e.UnexpectedExits(); len(exits) > 0 {
		t.Fatalf("%d unexpected exits of lab processes:\n%s", len(exits), strings.Join(exits, "\n---\n"))
	}
}

// agentStatus reads n's agent's status document.
func agentStatus(n *lab.Node) (status.Snapshot, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	return status.Fetch(context.Background(), client, n.StatusURL)
}

// clientNode is the node of cluster c's client pod.
func (e *labEnv) clientNode(t *testing.T, c *lab.Cluster) *lab.Node {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=client"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("cluster %s: client pod: %v %v", c.Name, pods, err)
	}
	for _, n := range c.Nodes {
		if n.Name == pods.Items[0].Spec.NodeName {
			return n
		}
	}
	t.Fatalf("cluster %s: client pod on unknown node %q", c.Name, pods.Items[0].Spec.NodeName)
	return nil
}

// checkPodDevices: every agent has its tc programs on the host side of
// each running pod's veth on its node, and on nothing else (the node's own
// eth0 in particular).
func (e *labEnv) checkPodDevices(t *testing.T) {
	t.Helper()
	checked := map[string]int{}
	for _, c := range e.Clusters {
		for _, n := range c.Nodes {
			testenv.Eventually(t, 30*time.Second, func() error {
				pods, err := c.Client.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.Name})
				if err != nil {
					return err
				}
				want := map[string]string{}
				for _, p := range pods.Items {
					if p.Status.Phase == "Running" && !p.Spec.HostNetwork && p.DeletionTimestamp == nil {
						want[node.VethName(string(p.UID))] = p.Name
					}
				}
				snap, err := agentStatus(n)
				if err != nil {
					return err
				}
				have := map[string]bool{}
				for _, d := range snap.PodDevices {
					have[d] = true
					if !strings.HasPrefix(d, "blp") {
						return fmt.Errorf("node %s: tc programs on %s, which is no pod's veth (devices %v)", n.Name, d, snap.PodDevices)
					}
				}
				for veth, pod := range want {
					if !have[veth] {
						return fmt.Errorf("node %s: no tc programs on %s, pod %s's veth (devices %v)", n.Name, veth, pod, snap.PodDevices)
					}
				}
				checked[n.Name] = len(want)
				return nil
			})
		}
	}
	total := 0
	for _, k := range checked {
		total += k
	}
	if total == 0 {
		t.Fatalf("no pod veth checked on any node: %v", checked)
	}
	t.Logf("tc programs on every pod veth: %v pods per node", checked)
}

// TestLab builds one lab of two clusters × two nodes and runs the
// end-to-end checks of issue 11 on it, in an order where the destructive
// ones (broker outage, a cluster leaving) come last.
func TestLab(t *testing.T) {
	kubeBin := requireLab(t)
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Config{Clusters: 2, Nodes: 2, Dir: t.TempDir(), KubeBin: kubeBin, Bin: bin,
		LeaseTTL: 10 * time.Second, Progress: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("tear down the lab: %v", err)
		}
		checkNoLeftovers(t, l.Run, filepath.Dir(l.Dir))
	})
	e := &labEnv{Lab: l, east: l.Cluster("east"), west: l.Cluster("west")}
	for _, c := range l.Clusters {
		e.mustKubectl(t, c, nil, "apply", "-f", "../deploy/examples/")
	}
	for _, c := range l.Clusters {
		for _, d := range []string{"web", "client"} {
			e.mustKubectl(t, c, nil, "rollout", "status", "deployment/"+d, "--timeout=180s")
		}
	}

	// A clean start restarts nothing: every process came up in order.
	e.noExits(t)

	t.Run("AgentsFindTheirNode", e.testAgentsFindTheirNode)
	t.Run("ManifestsAnsweredByBothClusters", e.testManifests)
	t.Run("Kubectl", e.testKubectl)
	t.Run("OneSidedServiceOverWireGuard", e.testOneSided)
	t.Run("Affinity", e.testAffinity)
	t.Run("RestartsUnderTraffic", e.testRestarts)
	// Up to here nothing was broken on purpose (the restarts above were
	// asked for): no process may have exited by itself.
	e.noExits(t)
	t.Run("BrokerOutage", e.testBrokerOutage)
	t.Run("ClusterLeaves", e.testClusterLeaves)
}

// testManifests: the unchanged examples (apps/v1 Deployments, a
// ConfigMap-served page, a global Service) applied to both clusters; a
// client pod in each gets answers from both clusters, and the page.
func (e *labEnv) testManifests(t *testing.T) {
	for _, c := range []*lab.Cluster{e.east, e.west} {
		vip := e.vip(t, c, "web")
		heard := map[string]bool{}
		testenv.Eventually(t, 90*time.Second, func() error {
			id, err := e.call(t, c, "http://"+vip+":8080/")
			if err != nil {
				return err
			}
			heard[id.Cluster] = true
			if !heard["east"] || !heard["west"] {
				return fmt.Errorf("cluster %s's client heard only from %v", c.Name, heard)
			}
			return nil
		})
		page, err := e.kubectl(t, c, nil, "exec", "deploy/client", "--", "curl", "-s", "--max-time", "2", "http://"+vip+"/")
		if err != nil || !strings.Contains(page, "Hello from a global service.") {
			t.Errorf("cluster %s: the ConfigMap page: %q, %v", c.Name, page, err)
		}
	}
	e.failed(t)
}

// testKubectl: get pods -o wide, exec, logs and scale behave as against a
// real cluster.
func (e *labEnv) testKubectl(t *testing.T) {
	c := e.east
	wide := e.mustKubectl(t, c, nil, "get", "pods", "-o", "wide", "-l", "app=web")
	for _, want := range []string{"Running", "2/2", "east-"} {
		if !strings.Contains(wide, want) {
			t.Errorf("kubectl get pods -o wide lacks %q:\n%s", want, wide)
		}
	}
	if out := e.mustKubectl(t, c, nil, "exec", "deploy/client", "--", "busybox", "echo", "hello from a pod"); strings.TrimSpace(out) != "hello from a pod" {
		t.Errorf("kubectl exec echo: %q", out)
	}
	// Exec with stdin, as `kubectl exec -i` streams it.
	if out := e.mustKubectl(t, c, strings.NewReader("piped\n"), "exec", "-i", "deploy/client", "--", "busybox", "cat"); out != "piped\n" {
		t.Errorf("kubectl exec -i cat: %q", out)
	}
	// The stand-in logs each request it serves. The service spreads
	// requests over every web pod of the mesh, so send one and read the logs
	// of all of this cluster's web pods (`kubectl logs deploy/web` reads one).
	vip := e.vip(t, c, "web")
	testenv.Eventually(t, 30*time.Second, func() error {
		if _, err := e.call(t, c, "http://"+vip+":8080/"); err != nil {
			return err
		}
		out, err := e.kubectl(t, c, nil, "logs", "-l", "app=web", "-c", "whoami", "--prefix")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "request") {
			return fmt.Errorf("kubectl logs -l app=web: no request logged yet: %q", out)
		}
		return nil
	})
	e.mustKubectl(t, c, nil, "scale", "deployment/web", "--replicas=3")
	e.mustKubectl(t, c, nil, "rollout", "status", "deployment/web", "--timeout=120s")
	testenv.Eventually(t, 30*time.Second, func() error {
		slices, err := c.Client.DiscoveryV1().EndpointSlices("default").List(context.Background(), metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=web"})
		if err != nil {
			return err
		}
		ready := 0
		for _, s := range slices.Items {
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					ready++
				}
			}
		}
		if ready != 3 {
			return fmt.Errorf("%d ready endpoints, want 3", ready)
		}
		return nil
	})
	e.mustKubectl(t, c, nil, "scale", "deployment/web", "--replicas=2")
	e.mustKubectl(t, c, nil, "rollout", "status", "deployment/web", "--timeout=120s")
	e.failed(t)
}

// soloManifest is a global service named name in every cluster, with
// backends only where the Deployment is applied too.
func soloManifest(name string, withDeployment bool) string {
	m := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  annotations: {braid.dev/global: "true"}
spec:
  selector: {app: %[1]s}
  ports: [{name: whoami, port: 8080, targetPort: 8080}]
`, name)
	if withDeployment {
		m += fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      containers:
        - name: whoami
          image: traefik/whoami:v1.10
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}
`, name)
	}
	return m
}

// testOneSided: a global service with backends only in one cluster is
// reached from a pod of the other through its own ClusterIP (socket load
// balancer), and between the clusters' nodes the underlay carries only
// WireGuard; both directions.
func (e *labEnv) testOneSided(t *testing.T) {
	e.checkPodDevices(t)
	for _, dir := range []struct{ from, to *lab.Cluster }{{e.west, e.east}, {e.east, e.west}} {
		name := "solo-" + string(dir.to.Name)
		e.mustKubectl(t, dir.to, strings.NewReader(soloManifest(name, true)), "apply", "-f", "-")
		e.mustKubectl(t, dir.from, strings.NewReader(soloManifest(name, false)), "apply", "-f", "-")
		e.mustKubectl(t, dir.to, nil, "rollout", "status", "deployment/"+name, "--timeout=120s")
		url := "http://" + e.vip(t, dir.from, name) + ":8080/"
		testenv.Eventually(t, 60*time.Second, func() error {
			_, err := e.call(t, dir.from, url)
			return err
		})

		// The client's calls leave its pod through the tc program on the
		// pod's veth, which steers them into WireGuard.
		from := e.clientNode(t, dir.from)
		before, err := agentStatus(from)
		if err != nil {
			t.Fatal(err)
		}
		capture := e.startCapture(t, dir.from, dir.to)
		for i := range 5 {
			id, err := e.call(t, dir.from, url)
			if err != nil {
				t.Fatalf("call %d from %s: %v", i, dir.from.Name, err)
			}
			if id.Cluster != string(dir.to.Name) {
				t.Fatalf("call %d from %s answered by %+v, want cluster %s", i, dir.from.Name, id, dir.to.Name)
			}
		}
		lines := capture.stop(t)
		after, err := agentStatus(from)
		if err != nil {
			t.Fatal(err)
		}
		if moved := after.Counters["tunnel_redirect"] - before.Counters["tunnel_redirect"]; moved < 5 {
			t.Errorf("%s → %s: node %s's tc program steered %d packets into WireGuard during 5 calls, want at least 5 (counters %v)", dir.from.Name, dir.to.Name, from.Name, moved, after.Counters)
		}
		if len(lines) == 0 {
			t.Fatalf("%s → %s: no packet between the clusters' nodes captured", dir.from.Name, dir.to.Name)
		}
		for _, l := range lines {
			if !strings.Contains(l, ": UDP,") || strings.Count(l, fmt.Sprintf(".%d", 51820)) != 2 {
				t.Fatalf("%s → %s: the underlay carried a packet that is not WireGuard:\n%s", dir.from.Name, dir.to.Name, l)
			}
		}
		t.Logf("%s → %s: %d packets between the clusters' nodes, all WireGuard UDP (first: %s)", dir.from.Name, dir.to.Name, len(lines), lines[0])
	}
	e.failed(t)
}

type capture struct {
	cmd   *exec.Cmd
	lines chan string
}

// startCapture records every IPv4 packet between a node of a and a node of
// b on the underlay bridge.
func (e *labEnv) startCapture(t *testing.T, a, b *lab.Cluster) *capture {
	t.Helper()
	hosts := func(c *lab.Cluster) string {
		var hs []string
		for _, n := range c.Nodes {
			hs = append(hs, "host "+n.IP.String())
		}
		return "(" + strings.Join(hs, " or ") + ")"
	}
	runs, err := lab.Runs(filepath.Dir(e.Dir))
	if err != nil || len(runs) != 1 {
		t.Fatalf("lab runs: %v %v", runs, err)
	}
	cmd := exec.Command("tcpdump", "-i", runs[0].Bridge, "-nn", "-l", "-q", "ip and "+hosts(a)+" and "+hosts(b)+
		// Gossip (memberlist, AES-GCM with the mesh key) carries liveness
		// only, never workload traffic: every other packet must be WireGuard.
		fmt.Sprintf(" and not port %d", gossip.DefaultPort))
	return startTcpdump(t, cmd)
}

// startTcpdump starts cmd, a `tcpdump -l` command, and returns once it
// captures.
func startTcpdump(t testing.TB, cmd *exec.Cmd) *capture {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	// tcpdump says "listening on" once the capture runs.
	started := make(chan struct{})
	go func() {
		s := bufio.NewScanner(stderr)
		once := false
		for s.Scan() {
			if !once && strings.Contains(s.Text(), "listening on") {
				close(started)
				once = true
			}
		}
		if !once {
			close(started)
		}
	}()
	c := &capture{cmd: cmd, lines: make(chan string, 10000)}
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if l := strings.TrimSpace(s.Text()); l != "" {
				c.lines <- l
			}
		}
		close(c.lines)
	}()
	<-started
	return c
}

// stop ends the capture and returns its lines.
func (c *capture) stop(t testing.TB) []string {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	var out []string
	for l := range c.lines {
		out = append(out, l)
	}
	_ = c.cmd.Wait()
	return out
}

// testAffinity: the braid.dev/affinity annotation across real clusters.
func (e *labEnv) testAffinity(t *testing.T) {
	svc := func(name, affinity string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
  annotations: {braid.dev/global: "true", braid.dev/affinity: %s}
spec:
  selector: {app: web}
  ports: [{name: whoami, port: 8080, targetPort: whoami}]
`, name, affinity)
	}
	for _, c := range []*lab.Cluster{e.east, e.west} {
		for _, a := range []string{"local", "remote", "none"} {
			e.mustKubectl(t, c, strings.NewReader(svc("aff-"+a, a)), "apply", "-f", "-")
		}
	}
	c, other := e.east, "west"
	for _, a := range []string{"local", "remote", "none"} {
		url := "http://" + e.vip(t, c, "aff-"+a) + ":8080/"
		testenv.Eventually(t, 60*time.Second, func() error {
			_, err := e.call(t, c, url)
			return err
		})
		heard := map[string]int{}
		for range 12 {
			id, err := e.call(t, c, url)
			if err != nil {
				t.Fatalf("affinity %s: %v", a, err)
			}
			heard[id.Cluster]++
		}
		switch a {
		case "local":
			if heard[other] != 0 || heard["east"] == 0 {
				t.Errorf("affinity local from east: answers %v, want east only", heard)
			}
		case "remote":
			if heard["east"] != 0 || heard[other] == 0 {
				t.Errorf("affinity remote from east: answers %v, want west only", heard)
			}
		case "none":
			// Both clusters answer; 12 calls over 4 backends miss one
			// cluster with probability 2·(1/2)^12.
			if heard["east"] == 0 || heard[other] == 0 {
				t.Errorf("affinity none from east: answers %v, want both clusters", heard)
			}
		}
		t.Logf("affinity %s from east: %v", a, heard)
	}
	e.failed(t)
}

// stream is an HTTP/1.1 keep-alive connection from east's client pod to a
// service, through `kubectl exec -i ... busybox nc`: one TCP connection
// that must survive what the test does meanwhile.
type stream struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func (e *labEnv) openStream(t *testing.T, c *lab.Cluster, vip string) *stream {
	t.Helper()
	cmd := exec.Command(filepath.Join(e.KubeBin, "kubectl"), "--kubeconfig", c.Kubeconfig, "exec", "-i", "deploy/client", "--", "busybox", "nc", vip, "8080")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &stream{cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(func() { in.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return s
}

// ask sends one request on the stream and returns who answered.
func (s *stream) ask(t *testing.T) identity {
	t.Helper()
	if _, err := io.WriteString(s.in, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		t.Fatalf("stream: write: %v", err)
	}
	done := make(chan struct{})
	var (
		id  identity
		err error
	)
	go func() {
		defer close(done)
		var resp *http.Response
		resp, err = http.ReadResponse(s.out, nil)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		err = json.NewDecoder(resp.Body).Decode(&id)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("stream: no answer within 20s")
	}
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	return id
}

// loopResult is what a connect loop reports: how many connects failed
// (-1: the loop did not finish) and, for each failure, which connect it
// was, when it started and curl's error, to set beside the lab's logs.
type loopResult struct {
	failed   int
	failures string
}

// connectLoop runs n connects from c's client pod to url, one new
// connection each, and reports how many failed and how.
func (e *labEnv) connectLoop(t *testing.T, c *lab.Cluster, url string, n int) (chan loopResult, func()) {
	t.Helper()
	return e.connectLoopFrom(t, c, []string{"exec", "deploy/client"}, url, n)
}

// connectLoopFrom is connectLoop from the pod kubectl's exec args name.
func (e *labEnv) connectLoopFrom(t *testing.T, c *lab.Cluster, execArgs []string, url string, n int) (chan loopResult, func()) {
	t.Helper()
	script := fmt.Sprintf(`fail=0; i=0; while [ $i -lt %d ]; do i=$((i+1)); at=$(date -u +%%H:%%M:%%S.%%N); `+
		`if ! err=$(curl -sS -o /dev/null --max-time 2 %s 2>&1); then fail=$((fail+1)); echo "connect $i (started $at) failed: $err"; fi; done; echo $fail`, n, url)
	args := append([]string{"--kubeconfig", c.Kubeconfig}, execArgs...)
	cmd := exec.Command(filepath.Join(e.KubeBin, "kubectl"), append(args, "--", "sh", "-c", script)...)
	res := make(chan loopResult, 1)
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := cmd.Wait()
		r := loopResult{failed: -1}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if _, serr := fmt.Sscan(lines[len(lines)-1], &r.failed); err != nil || serr != nil {
			r.failed = -1
		}
		r.failures = strings.Join(lines[:len(lines)-1], "\n")
		res <- r
	}()
	return res, func() { _ = cmd.Process.Kill() }
}

// testRestarts: the agent of the client's node and the operators restart
// during a connect loop and an established stream: no connect fails, the
// stream stays on its connection.
func (e *labEnv) testRestarts(t *testing.T) {
	c := e.east
	vip := e.vip(t, c, "solo-west")
	st := e.openStream(t, c, vip)
	first := st.ask(t)
	if first.Cluster != "west" {
		t.Fatalf("stream answered by %+v, want west", first)
	}
	pods, err := c.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=client"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("client pod: %v %v", pods, err)
	}
	var node *lab.Node
	for _, n := range c.Nodes {
		if n.Name == pods.Items[0].Spec.NodeName {
			node = n
		}
	}
	res, kill := e.connectLoop(t, c, "http://"+vip+":8080/", 150)
	defer kill()
	stamp := func(what string) { t.Logf("%s %s", time.Now().UTC().Format("15:04:05.000"), what) }
	stamp("stopping " + node.Name + "'s agent")
	node.StopAgent(syscall.SIGTERM)
	stamp("starting " + node.Name + "'s agent")
	if err := node.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if id := st.ask(t); id.Pod != first.Pod {
		t.Fatalf("after the agent restart the stream is answered by %s, was %s", id.Pod, first.Pod)
	}
	for _, cl := range []*lab.Cluster{e.east, e.west} {
		stamp("stopping " + string(cl.Name) + "'s operator")
		cl.StopOperator(syscall.SIGTERM)
		stamp("starting " + string(cl.Name) + "'s operator")
		if err := cl.StartOperator(); err != nil {
			t.Fatal(err)
		}
	}
	if id := st.ask(t); id.Pod != first.Pod {
		t.Fatalf("after the operator restarts the stream is answered by %s, was %s", id.Pod, first.Pod)
	}
	select {
	case r := <-res:
		if r.failed != 0 {
			t.Fatalf("%d connects failed across the restarts (-1: the loop did not finish):\n%s", r.failed, r.failures)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("connect loop did not finish")
	}
	e.waitSynced(t)
	e.failed(t)
}

// waitSynced waits until every operator and agent reports every other live
// cluster synced.
func (e *labEnv) waitSynced(t *testing.T) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	for _, c := range e.Clusters {
		urls := []string{c.StatusURL}
		for _, n := range c.Nodes {
			urls = append(urls, n.StatusURL)
		}
		for _, u := range urls {
			testenv.Eventually(t, 60*time.Second, func() error {
				snap, err := status.Fetch(context.Background(), client, u)
				if err != nil {
					return err
				}
				for _, r := range snap.Remotes {
					if !r.Gone && (!r.Connected || !r.Synced) {
						return fmt.Errorf("%s %s: %s not synced", snap.Role, snap.Cluster, r.Name)
					}
				}
				return nil
			})
		}
	}
}

// testBrokerOutage: with the broker stopped for 60 s, established and new
// connections keep working and nothing is deleted; a change made during
// the outage converges within seconds of its return.
func (e *labEnv) testBrokerOutage(t *testing.T) {
	c := e.east
	vip := e.vip(t, c, "solo-west")
	url := "http://" + vip + ":8080/"
	st := e.openStream(t, c, vip)
	first := st.ask(t)
	e.StopBroker()
	stopped := time.Now()
	// Meanwhile west scales solo-west to two: the new backend must reach
	// east once the broker is back.
	e.mustKubectl(t, e.west, nil, "scale", "deployment/solo-west", "--replicas=2")
	e.mustKubectl(t, e.west, nil, "rollout", "status", "deployment/solo-west", "--timeout=60s")
	for time.Since(stopped) < 60*time.Second {
		if id, err := e.call(t, c, url); err != nil || id.Cluster != "west" {
			t.Fatalf("new connection %v into the outage: %+v %v", time.Since(stopped).Round(time.Second), id, err)
		}
		if id := st.ask(t); id.Pod != first.Pod {
			t.Fatalf("established stream answered by %s, was %s", id.Pod, first.Pod)
		}
		time.Sleep(2 * time.Second) // pace the probes over the outage; each one asserts
	}
	if err := e.StartBroker(context.Background()); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	pods := map[string]bool{}
	testenv.Eventually(t, 30*time.Second, func() error {
		id, err := e.call(t, c, url)
		if err != nil {
			return err
		}
		pods[id.Pod] = true
		if len(pods) < 2 {
			return fmt.Errorf("east reached only %v of solo-west's two pods", pods)
		}
		return nil
	})
	t.Logf("the change made during the 60 s outage reached east %v after the broker returned", time.Since(back).Round(100*time.Millisecond))
	e.waitSynced(t)
	e.failed(t)
}

// testClusterLeaves: west's operator stops and its lease expires; until
// then east's status shows the time left, afterwards west's backends are
// gone from east.
func (e *labEnv) testClusterLeaves(t *testing.T) {
	url := "http://" + e.vip(t, e.east, "solo-west") + ":8080/"
	if _, err := e.call(t, e.east, url); err != nil {
		t.Fatal(err)
	}
	e.west.StopOperator(syscall.SIGKILL) // no goodbye: only the lease tells
	// Until the lease runs out, east's status shows the time west has
	// left, falling: nothing renews it any more.
	client := &http.Client{Timeout: 2 * time.Second}
	westLease := func() (float64, error) {
		snap, err := status.Fetch(context.Background(), client, e.east.StatusURL)
		if err != nil {
			return 0, err
		}
		for _, r := range snap.Remotes {
			if r.Name == "west" && !r.Gone {
				if r.LeaseRemaining == nil {
					return 0, fmt.Errorf("east's status shows no lease time for west: %+v", r)
				}
				return *r.LeaseRemaining, nil
			}
		}
		return 0, fmt.Errorf("west already gone from east's status: %+v", snap.Remotes)
	}
	first, err := westLease()
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		left, err := westLease()
		if err != nil {
			return err
		}
		if left >= first {
			return fmt.Errorf("west's lease shows %.1fs left, not below the first read's %.1fs yet", left, first)
		}
		t.Logf("east's status: west's lease has %.1fs left, then %.1fs", first, left)
		return nil
	})
	testenv.Eventually(t, 60*time.Second, func() error {
		_, err := e.call(t, e.east, url)
		if err == nil {
			return fmt.Errorf("solo-west still answers from east")
		}
		return nil
	})
	snap, err := status.Fetch(context.Background(), client, e.east.StatusURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range snap.Remotes {
		if r.Name == "west" && !r.Gone {
			t.Errorf("east's operator still shows west as present: %+v", r)
		}
	}
	if err := e.west.StartOperator(); err != nil {
		t.Fatal(err)
	}
	e.failed(t)
}

// checkNoLeftovers fails t if run left anything on the machine: a
// network namespace, a host interface, pinned BPF objects, a WireGuard
// socket, a cgroup, a process (named by its command line, or still in one
// of the run's cgroups), a mount, or a run record in dir's parent.
func checkNoLeftovers(t testing.TB, run, dir string) {
	t.Helper()
	var left []string
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "bl"+run) {
		left = append(left, "netns: "+string(out))
	}
	if out, _ := exec.Command("ip", "-o", "link").Output(); strings.Contains(string(out), run) {
		left = append(left, "interfaces: "+string(out))
	}
	globs := []string{"/sys/fs/bpf/braid-lab-" + run, "/var/run/wireguard/bw" + run + "*", "/run/netns/bl" + run + "*"}
	cgRoot := "braid-lab-" + run
	if m, err := cgroupv2.Find(); err == nil {
		globs = append(globs, filepath.Join(m.Point, cgRoot))
	} else {
		t.Errorf("find the cgroup v2 mount: %v", err)
	}
	for _, glob := range globs {
		if m, _ := filepath.Glob(glob); len(m) > 0 {
			left = append(left, fmt.Sprint(m))
		}
	}
	if out, _ := exec.Command("pgrep", "-af", dir).Output(); len(strings.TrimSpace(string(out))) > 0 {
		left = append(left, "processes: "+string(out))
	}
	// Pod processes need not name dir; every one ran in a cgroup of the run.
	procs, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, f := range procs {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), "/"+cgRoot+"/") {
			cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(f), "cmdline"))
			left = append(left, fmt.Sprintf("process %s in the run's cgroups: %s", filepath.Base(filepath.Dir(f)), strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), "bl"+run) || strings.Contains(string(b), dir) {
		left = append(left, "mounts")
	}
	if runs, err := lab.Runs(dir); err != nil || len(runs) > 0 {
		left = append(left, fmt.Sprintf("run records in %s: %v %v", dir, runs, err))
	}
	if len(left) > 0 {
		t.Errorf("lab run %s left behind: %v", run, left)
	}
}
