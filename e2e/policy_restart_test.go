//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh/policy/policytest"
	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/internal/netnsrun"
	"github.com/braidmesh/braid/internal/testenv"
)

// scenarioNamed returns policytest's scenario name.
func scenarioNamed(t *testing.T, name string) policytest.Scenario {
	t.Helper()
	for _, s := range policytest.Scenarios() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no policytest scenario %q", name)
	return policytest.Scenario{}
}

// testAgentRestart: the agent of D's node is killed (SIGKILL) while a
// policy isolates D both ways. After its exit and before a new agent
// starts, every cell between east's endpoints and the hosts outside the
// mesh keeps the scenario's verdict: the pinned programs and maps enforce
// on their own. (West's pods are left out while it is down: the node's
// WireGuard device lives in the agent's process.) The restarted agent
// takes the maps over without a window of other verdicts: once it reports
// the same policy revision enforced, its /metrics show that it wrote no
// policy and no ipcache entry; it shows the drops the datapath counted
// while no agent ran; then the whole matrix holds again, west included.
func (m *policyLab) testAgentRestart(t *testing.T) {
	sc := scenarioNamed(t, "ingress and egress rules of one policy")
	want, err := sc.Verdicts()
	if err != nil {
		t.Fatal(err)
	}
	east := m.l.Cluster(string(policytest.Local))
	m.applyOnly(t, east, sc.Policies)
	n := m.node["D"]
	st, err := agentStatus(n)
	if err != nil || st.Policy == nil {
		t.Fatalf("node %s: status %+v, %v", n.Name, st.Policy, err)
	}
	rev, before := st.Policy.Enforced, policyDrops(st.Policy.Drops, "a/db", "ingress")

	n.StopAgent(syscall.SIGKILL) // returns once the process has exited
	started := false
	t.Cleanup(func() {
		if !started {
			_ = n.StartAgent() // for the tests that follow; never waits
		}
	})
	if _, err := agentStatus(n); err == nil {
		t.Fatalf("node %s's agent still answers after SIGKILL", n.Name)
	}
	t.Logf("node %s's agent killed with policy revision %s enforced and %d drops into a/db counted; probing with no agent there", n.Name, rev, before)
	m.probeAll(t, want, func(e policytest.Endpoint) bool { return e.Cluster != policytest.Remote })
	if t.Failed() {
		t.Fatal("verdicts changed while the agent was down")
	}

	if err := n.StartAgent(); err != nil {
		t.Fatal(err)
	}
	started = true
	testenv.Eventually(t, 2*time.Minute, func() error {
		st, err := agentStatus(n)
		if err != nil {
			return err
		}
		for _, p := range st.Problems {
			if strings.Contains(p, "pinned maps") {
				return fmt.Errorf("node %s: %s", n.Name, p)
			}
		}
		for _, r := range st.Remotes {
			if !r.Gone && (!r.Connected || !r.Synced) {
				return fmt.Errorf("node %s: cluster %s not synced yet", n.Name, r.Name)
			}
		}
		switch p := st.Policy; {
		case p == nil || !p.Synced:
			return fmt.Errorf("node %s: policies not synced yet", n.Name)
		case p.Revision != rev || p.Enforced != rev:
			return fmt.Errorf("node %s: policy revision %s compiled, %s enforced; want %s", n.Name, p.Revision, p.Enforced, rev)
		case policyDrops(p.Drops, "a/db", "ingress") <= before:
			return fmt.Errorf("node %s: %d drops into a/db shown, want more than the %d before the restart: %+v", n.Name, policyDrops(p.Drops, "a/db", "ingress"), before, p.Drops)
		}
		return nil
	})
	metrics, err := scrapeMetrics(n.StatusURL)
	if err != nil {
		t.Fatal(err)
	}
	writes := regexp.MustCompile(`(?m)^braid_datapath_map_writes_total\{map="(ipcache|policy)",op="(\w+)"\} (\d+)$`)
	for _, w := range writes.FindAllStringSubmatch(metrics, -1) {
		if w[3] != "0" {
			t.Errorf("the restarted agent on %s wrote to its %s map (%s %s entries): it did not take the pinned maps over as they were", n.Name, w[1], w[2], w[3])
		}
	}
	m.probeAll(t, want, nil)
}

// testEstablished: an established connection (HTTP keep-alive from A to
// D:8080, which D's policy admits from namespace a's web pods) goes on
// when namespace a is relabelled, which gives A and D new identities, and
// is dropped on its next request once a policy denies it.
func (m *policyLab) testEstablished(t *testing.T) {
	ctx := context.Background()
	east := m.l.Cluster(string(policytest.Local))
	m.applyOnly(t, east, scenarioNamed(t, "podSelector peer stays in its namespace and cluster").Policies)
	c := dialKeepAlive(t, m.ns["A"], netip.AddrPortFrom(m.addr["D"], 8080))
	if err := c.ask(allowedWait); err != nil {
		t.Fatalf("A -> D:8080 before any change: %v", err)
	}

	// D's node resolves both ends of the flow.
	n := m.node["D"]
	ipcache, err := ebpf.LoadPinnedMap(filepath.Join(n.PinDir, "ipcache"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("node %s's pinned ipcache: %v", n.Name, err)
	}
	defer ipcache.Close()
	identity := func(ep string) uint32 {
		var v bpf.IPCacheValue
		if err := ipcache.Lookup(bpf.IPCacheKeyFor(netip.PrefixFrom(m.addr[ep], 32)), &v); err != nil {
			t.Fatalf("node %s: ipcache lookup of %s: %v", n.Name, ep, err)
		}
		return v.Identity
	}
	oldA, oldD := identity("A"), identity("D")
	ns, err := east.Client.CoreV1().Namespaces().Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels["relabelled"] = strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := east.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("relabel namespace a: %v", err)
	}
	var newA, newD uint32
	testenv.Eventually(t, time.Minute, func() error {
		newA, newD = identity("A"), identity("D")
		if newA == oldA || newD == oldD {
			return fmt.Errorf("node %s's ipcache: A has identity %d (was %d), D %d (was %d): not both re-derived yet", n.Name, newA, oldA, newD, oldD)
		}
		return nil
	})
	if err := c.ask(allowedWait); err != nil {
		t.Fatalf("A -> D:8080 after namespace a's relabel (A %d -> %d, D %d -> %d): %v, want the established connection to go on", oldA, newA, oldD, newD, err)
	}
	t.Logf("namespace a relabelled: A %d -> %d, D %d -> %d; the established connection went on", oldA, newA, oldD, newD)

	m.applyOnly(t, east, scenarioNamed(t, "default deny ingress in a").Policies)
	err = c.ask(deniedWait)
	if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("A -> D:8080 on the established connection after D's ingress was denied: %v, want its next request dropped (a timeout)", err)
	}
}

// keepAlive is an HTTP/1.1 connection kept open across requests.
type keepAlive struct {
	c  net.Conn
	br *bufio.Reader
}

func dialKeepAlive(t *testing.T, ns netns.NsHandle, to netip.AddrPort) *keepAlive {
	t.Helper()
	var c net.Conn
	err := netnsrun.Do(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", to.String(), allowedWait)
		return err
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", to, err)
	}
	t.Cleanup(func() { c.Close() })
	return &keepAlive{c: c, br: bufio.NewReader(c)}
}

// ask sends one request on the connection and reads the whole answer
// within timeout.
func (k *keepAlive) ask(timeout time.Duration) error {
	_ = k.c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(k.c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", k.c.RemoteAddr()); err != nil {
		return err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || resp.Close {
		return fmt.Errorf("answer %s (close %v), want 200 on a kept connection", resp.Status, resp.Close)
	}
	return nil
}

// policyDrops is how many packets drops attributes to policy in dir.
func policyDrops(drops []status.PolicyDrops, policy, dir string) uint64 {
	var n uint64
	for _, d := range drops {
		if d.Policy == policy && d.Direction == dir && d.Reason == "policy" {
			n += d.Packets
		}
	}
	return n
}

// scrapeMetrics reads the /metrics of the status server at url.
func scrapeMetrics(url string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	resp, err := client.Get(url + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
