//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
	"github.com/braidmesh/braid/clustermesh/policy/policytest"
	"github.com/braidmesh/braid/internal/lab"
)

// policyBenchRounds is how many rounds BenchmarkPolicyEnforcedOnLab times
// (run it with -benchtime 1x: the lab starts once).
const policyBenchRounds = 40

// BenchmarkPolicyEnforcedOnLab times NetworkPolicy changes on the lab,
// from the kube-apiserver to the BPF maps, beside the kube-apiserver's
// own watch delay in the same rounds:
//
//   - edit: east's policy admitting west's api pods to east's db moves to
//     another port (an Update to east's kube-apiserver), until both east
//     agents report the new revision enforced (their status);
//   - remote: west's api pod is relabelled (an Update to west's
//     kube-apiserver: west's operator publishes a new identity), until the
//     ipcache of db's node in east maps the pod to the new identity, whose
//     allow entry is then in that node's policy trie (checked);
//   - raw: the Update until a watch on the same kube-apiserver sees it.
//
// Run as root:
//
//	make build kube-tools && go test -tags e2e -run '^$' -bench PolicyEnforcedOnLab -benchtime 1x -timeout 30m ./e2e/
func BenchmarkPolicyEnforcedOnLab(b *testing.B) {
	kubeBin := requireLab(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := lab.Up(ctx, lab.Config{Clusters: 2, Nodes: 2, Dir: b.TempDir(), KubeBin: kubeBin, Bin: bin, Progress: b.Logf})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := l.Close(); err != nil {
			b.Errorf("tear down the lab: %v", err)
		}
		checkNoLeftovers(b, l.Run, filepath.Dir(l.Dir))
	})
	m := newPolicyLab(b, l)
	east, west := l.Cluster(string(policytest.Local)), l.Cluster(string(policytest.Remote))
	var wb policytest.Endpoint
	for _, e := range m.eps {
		if e.Name == "WB" {
			wb = e
		}
	}
	tcp := corev1.ProtocolTCP
	pol := func(port int32) *networkingv1.NetworkPolicy {
		p := intstr.FromInt32(port)
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "db-from-west-api"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{clustermesh.LabelCluster: "west", "app": "api"}}, NamespaceSelector: &metav1.LabelSelector{}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
				}}}}
	}
	m.applyOnly(b, east, []*networkingv1.NetworkPolicy{pol(5000)})
	cur, err := east.Client.NetworkingV1().NetworkPolicies("a").Get(ctx, "db-from-west-api", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}

	// Raw: when the test's own watches see each resource version.
	var mu sync.Mutex
	seen := map[string]time.Time{}
	follow := func(w watch.Interface, err error) {
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(w.Stop)
		go func() {
			for ev := range w.ResultChan() {
				if o, ok := ev.Object.(metav1.Object); ok {
					mu.Lock()
					seen[o.GetResourceVersion()] = time.Now()
					mu.Unlock()
				}
			}
		}()
	}
	follow(east.Client.NetworkingV1().NetworkPolicies("a").Watch(ctx, metav1.ListOptions{ResourceVersion: cur.ResourceVersion}))
	follow(west.Client.CoreV1().Pods(wb.Namespace).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", podName(wb)).String()}))
	sawAt := func(rv string) time.Time {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			mu.Lock()
			at, ok := seen[rv]
			mu.Unlock()
			if ok {
				return at
			}
		}
		b.Fatalf("no watch event for resource version %s", rv)
		return time.Time{}
	}

	dNode := m.node["D"]
	open := func(name string) *ebpf.Map {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dNode.PinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			b.Fatalf("node %s's pinned %s: %v", dNode.Name, name, err)
		}
		b.Cleanup(func() { mp.Close() })
		return mp
	}
	ipcache, trie := open("ipcache"), open("policy_v2")
	identityOf := func(addr netip.Addr) uint32 {
		var v bpf.IPCacheValue
		if err := ipcache.Lookup(bpf.IPCacheKeyFor(netip.PrefixFrom(addr, 32)), &v); err != nil {
			return 0
		}
		return v.Identity
	}
	until := func(what string, ok func() bool) {
		for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("%s: not within 30s", what)
			}
		}
	}

	var edit, remote, rawEdit, rawRemote []time.Duration
	b.ResetTimer()
	for i := range policyBenchRounds {
		// A policy edit in east.
		port := int32(5001 + i)
		next := cur.DeepCopy()
		next.Spec = pol(port).Spec
		start := time.Now()
		cur, err = east.Client.NetworkingV1().NetworkPolicies("a").Update(ctx, next, metav1.UpdateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		rev := agent.PolicyRevision([]*networkingv1.NetworkPolicy{cur})
		for _, n := range east.Nodes {
			until(fmt.Sprintf("node %s enforcing revision %s", n.Name, rev), func() bool {
				st, err := agentStatus(n)
				return err == nil && st.Policy != nil && st.Policy.Enforced == rev
			})
		}
		edit = append(edit, time.Since(start))
		rawEdit = append(rawEdit, sawAt(cur.ResourceVersion).Sub(start))

		// West's api pod relabelled: a new identity east's policy admits.
		pod, err := west.Client.CoreV1().Pods(wb.Namespace).Get(ctx, podName(wb), metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		old := identityOf(m.addr["WB"])
		pod.Labels["round"] = strconv.Itoa(i)
		start = time.Now()
		pod, err = west.Client.CoreV1().Pods(wb.Namespace).Update(ctx, pod, metav1.UpdateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		var id uint32
		until(fmt.Sprintf("node %s mapping WB to a new identity (was %d)", dNode.Name, old), func() bool {
			id = identityOf(m.addr["WB"])
			return id != 0 && id != old
		})
		remote = append(remote, time.Since(start))
		rawRemote = append(rawRemote, sawAt(pod.ResourceVersion).Sub(start))
		// Make before break: the new identity's allow entry was written
		// before the ipcache pointed WB at it.
		var v bpf.PolicyValue
		k := bpf.PolicyAllowKeys(bpf.PolicyIngress, identityOf(m.addr["D"]), id, 6, uint16(port), uint16(port))[0]
		if err := trie.Lookup(k, &v); err != nil || v.Action != bpf.PolicyAllow {
			b.Fatalf("round %d: WB's new identity %d is in node %s's ipcache without its allow entry to db on %d (%+v, %v)", i, id, dNode.Name, port, v, err)
		}
	}
	b.StopTimer()
	q := func(d []time.Duration, p float64) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	for _, r := range []struct {
		name string
		d    []time.Duration
	}{{"edit", edit}, {"remote", remote}, {"raw-edit", rawEdit}, {"raw-remote", rawRemote}} {
		b.ReportMetric(q(r.d, 0.5), r.name+"-p50-ms")
		b.ReportMetric(q(r.d, 0.99), r.name+"-p99-ms")
	}
	m.apply(b, east, nil)
}
