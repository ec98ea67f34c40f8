package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/agent"
)

func pct(d []time.Duration, p int) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[(len(s)-1)*p/100].Nanoseconds()) / 1000
}

// thousandPolicies isolates a/db (and a/web) with 1,000 policies: each
// allows a/web to one port of db from 8000 up (8080 among them) and the
// db from namespace c on another.
func thousandPolicies() []*networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	var out []*networkingv1.NetworkPolicy
	for i := range 1000 {
		port := intstr.FromInt32(int32(8000 + i))
		sel := map[string]string{"app": "db"}
		if i%2 == 1 {
			sel = map[string]string{"app": "web"}
		}
		out = append(out, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: fmt.Sprintf("p%d", i)},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}, {NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "x"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				}}}})
	}
	return out
}

// BenchmarkPolicyConnectLatency times TCP connects from pod A to pod D
// (port 8080) on one node's real datapath with no policy and with 1,000
// NetworkPolicies selecting both pods, alternating in blocks in one run.
// Run as root:
//
//	go test -run XXX -bench PolicyConnectLatency -benchtime 4000x ./clustermesh/agent/
func BenchmarkPolicyConnectLatency(b *testing.B) {
	w := newPolicyWorld(b)
	var to netip.Addr
	for _, e := range w.eps {
		if e.Name == "D" {
			to = e.Addr
		}
	}
	many := thousandPolicies()
	dst := netip.AddrPortFrom(to, 8080).String()
	connect := func(n int) []time.Duration {
		out := make([]time.Duration, 0, n)
		err := bpftest.Do(w.ns["A"], func() error {
			defer debug.SetGCPercent(debug.SetGCPercent(-1))
			for range n {
				start := time.Now()
				c, err := net.Dial("tcp", dst)
				if err != nil {
					return err
				}
				out = append(out, time.Since(start))
				c.Close()
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		return out
	}
	var none, loaded []time.Duration
	const blocks = 4
	per := max(b.N/blocks, 1)
	entries := 0
	b.ResetTimer()
	for range blocks {
		w.apply(b, nil)
		none = append(none, connect(per)...)
		w.apply(b, many)
		if m, err := w.objs.Policy.Dump(); err == nil {
			entries = len(m)
		}
		loaded = append(loaded, connect(per)...)
	}
	b.StopTimer()
	w.apply(b, nil)
	b.ReportMetric(pct(none, 50), "none-p50-us")
	b.ReportMetric(pct(none, 99), "none-p99-us")
	b.ReportMetric(pct(loaded, 50), "1000-p50-us")
	b.ReportMetric(pct(loaded, 99), "1000-p99-us")
	b.ReportMetric(float64(entries), "trie-entries")
}

// fakePolicies is a PolicySource whose policies the benchmark edits.
type fakePolicies struct {
	mu      sync.Mutex
	pols    []*networkingv1.NetworkPolicy
	changed func()
	ready   chan struct{}
}

func (f *fakePolicies) NetworkPolicies() ([]*networkingv1.NetworkPolicy, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pols, true
}

func (f *fakePolicies) Run(ctx context.Context, changed func()) error {
	f.mu.Lock()
	f.changed = changed
	f.mu.Unlock()
	close(f.ready)
	changed()
	<-ctx.Done()
	return nil
}

func (f *fakePolicies) set(p []*networkingv1.NetworkPolicy) {
	f.mu.Lock()
	f.pols = p
	c := f.changed
	f.mu.Unlock()
	c()
}

// BenchmarkPolicyChangeToBPFMap times, on a real etcd with east's agent
// and real BPF maps: a NetworkPolicy edit handed to east's agent until
// its rule is in the agent's policy map; a new identity published by west
// that east's policy admits until its rule is in east's policy map; and a
// raw etcd put → watch event, in the same rounds. Run as root:
//
//	go test -run XXX -bench PolicyChangeToBPFMap -benchtime 300x ./clustermesh/agent/
func BenchmarkPolicyChangeToBPFMap(b *testing.B) {
	bpftest.RequireRoot(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	westStore, eastStore := twoClusterStores(b, ctx)
	east := cluster("east", 1, "10.201.1.0/24", "172.21.0.0/16")
	west := cluster("west", 2, "10.201.2.0/24", "172.22.0.0/16")
	pubEast := runPublisher(b, ctx, east, eastStore)
	pubWest := runPublisher(b, ctx, west, westStore)
	db := &clustermesh.Identity{ID: 1<<16 | 1, Cluster: "east", Labels: map[string]string{"app": "db", clustermesh.LabelNamespace: "default"}}
	_ = pubEast.Upsert(db)

	tcp := corev1.ProtocolTCP
	policyOn := func(port int32) []*networkingv1.NetworkPolicy {
		p := intstr.FromInt32(port)
		return []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{clustermesh.LabelCluster: "west", "app": "api"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
				}}}}}
	}
	src := &fakePolicies{pols: policyOn(5000), ready: make(chan struct{})}
	pins := bpftest.PinDir(b)
	a, err := agent.New(agent.Config{Cluster: "east", Node: "e1", BPF: bpf.Config{PinDir: pins}, Policies: src}, eastStore, nil)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(10 * time.Second); len(a.Snapshot().Maps) == 0; {
		select {
		case err := <-done:
			done <- err // for the deferred wait
			b.Fatalf("agent: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("agent never reconciled: %+v", a.Snapshot())
		}
	}
	<-src.ready
	objs, err := bpf.Load(bpf.Config{PinDir: pins})
	if err != nil {
		b.Fatal(err)
	}
	defer objs.Close()
	waitKey := func(k bpf.PolicyKey) time.Duration {
		start := time.Now()
		for {
			// The trie returns the longest match: the isolation entry
			// (deny) until the rule is in.
			if v, err := objs.Policy.Lookup(k); err == nil && v.Action == bpf.PolicyAllow {
				return time.Since(start)
			}
			if time.Since(start) > 10*time.Second {
				b.Fatalf("policy key %+v not in the map after 10s; agent %+v", k, a.Snapshot().Policy)
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
	api := func(i int) *clustermesh.Identity {
		return &clustermesh.Identity{ID: clustermesh.NumericIdentity(2<<16 | (1 + i%60000)), Cluster: "west",
			Labels: map[string]string{"app": "api", clustermesh.LabelNamespace: "default", "round": fmt.Sprint(i)}}
	}
	_ = pubWest.Upsert(api(0))
	port := int32(5000)
	waitKey(bpf.PolicyAllowKeys(bpf.PolicyIngress, uint32(db.ID), uint32(api(0).ID), 6, uint16(port), uint16(port))[0])

	raw := westStore.Client()
	rawKey := clustermesh.KindPrefix(clustermesh.KindServices, "west") + "bench/raw"
	rawEvents := eastStore.Client().Watch(ctx, rawKey)
	var edit, remote, base []time.Duration
	b.ResetTimer()
	for i := range b.N {
		// A policy edit: the rule moves to another port.
		port = int32(5001 + i%50000)
		start := time.Now()
		src.set(policyOn(port))
		waitKey(bpf.PolicyAllowKeys(bpf.PolicyIngress, uint32(db.ID), uint32(api(i).ID), 6, uint16(port), uint16(port))[0])
		edit = append(edit, time.Since(start))

		// West's new identity, which east's policy admits.
		id := api(i + 1)
		start = time.Now()
		if err := pubWest.Upsert(id); err != nil {
			b.Fatal(err)
		}
		waitKey(bpf.PolicyAllowKeys(bpf.PolicyIngress, uint32(db.ID), uint32(id.ID), 6, uint16(port), uint16(port))[0])
		remote = append(remote, time.Since(start))
		pubWest.Delete(api(i).Key())

		start = time.Now()
		if _, err := raw.Put(ctx, rawKey, fmt.Sprint(i)); err != nil {
			b.Fatal(err)
		}
		select {
		case <-rawEvents:
		case <-time.After(10 * time.Second):
			b.Fatal("no raw watch event")
		}
		base = append(base, time.Since(start))
	}
	b.StopTimer()
	ms := func(us float64) float64 { return us / 1000 }
	b.ReportMetric(ms(pct(edit, 50)), "edit-p50-ms")
	b.ReportMetric(ms(pct(edit, 99)), "edit-p99-ms")
	b.ReportMetric(ms(pct(remote, 50)), "remote-p50-ms")
	b.ReportMetric(ms(pct(remote, 99)), "remote-p99-ms")
	b.ReportMetric(ms(pct(base, 50)), "raw-p50-ms")
	b.ReportMetric(ms(pct(base, 99)), "raw-p99-ms")
}
