package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

func cluster(name string, id int) clustermesh.ClusterConfig {
	return clustermesh.ClusterConfig{
		Name:     clustermesh.ClusterName(name),
		ID:       clustermesh.ClusterID(id),
		PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id), 0, 0}), 16)},
	}
}

// publishCluster runs a publisher with n entries of every kind.
func publishCluster(t *testing.T, ctx context.Context, s kvstore.Store, c clustermesh.ClusterConfig, n int, ttl time.Duration) *publish.Publisher {
	t.Helper()
	putGrant(t, s, c)
	p, err := publish.New(publish.Config{Cluster: c, LeaseTTL: ttl}, s, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ns, ids, ips, svcs []publish.Record
	first, _ := c.IdentityRange()
	for i := range n {
		node := netip.AddrFrom4([4]byte{192, 168, byte(c.ID), byte(i + 1)})
		ns = append(ns, &clustermesh.Node{Name: fmt.Sprintf("n%d", i), Cluster: c.Name, IPs: []netip.Addr{node}})
		ids = append(ids, &clustermesh.Identity{ID: first + clustermesh.NumericIdentity(i), Cluster: c.Name, Labels: map[string]string{"app": fmt.Sprint(i)}})
		pod := netip.AddrFrom4([4]byte{10, byte(c.ID), 0, byte(i + 1)})
		ips = append(ips, &clustermesh.IPEntry{Prefix: netip.PrefixFrom(pod, 32), Cluster: c.Name, Identity: first + clustermesh.NumericIdentity(i), HostIP: node})
		svcs = append(svcs, &clustermesh.Service{Cluster: c.Name, Namespace: "default", Name: fmt.Sprintf("svc%d", i), Global: true, Shared: true,
			Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Port: 80, Protocol: clustermesh.TCP}},
			Backends: []clustermesh.Backend{{IP: pod, Ports: []clustermesh.BackendPort{{Name: "", Port: 8080}}, Ready: true, Serving: true}}})
	}
	for kind, recs := range map[clustermesh.Kind][]publish.Record{clustermesh.KindNodes: ns, clustermesh.KindIdentities: ids, clustermesh.KindIPs: ips, clustermesh.KindServices: svcs} {
		if err := p.Replace(kind, recs); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		if err := p.Run(ctx); err != nil {
			t.Errorf("publisher %s: %v", c.Name, err)
		}
	}()
	return p
}

// putGrant writes the grant the broker would have made for c.
func putGrant(t testing.TB, s kvstore.Store, c clustermesh.ClusterConfig) {
	t.Helper()
	g := c.Grant()
	v, err := json.Marshal(&g)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), g.Key(), v, 0); err != nil {
		t.Fatal(err)
	}
}

func runWatcher(t *testing.T, ctx context.Context, s kvstore.Store, self clustermesh.ClusterName) *remote.Watcher {
	t.Helper()
	w, err := remote.New(remote.Config{Self: self}, s, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(ctx); err != nil {
			t.Errorf("watcher: %v", err)
		}
	}()
	t.Cleanup(func() { <-done })
	return w
}

func syncedWith(w *remote.Watcher, n int, names ...clustermesh.ClusterName) func() error {
	return func() error {
		snap := w.Snapshot()
		for _, name := range names {
			cs := snap.Clusters[name]
			if cs == nil || !cs.Synced {
				return fmt.Errorf("cluster %s not synced", name)
			}
			if len(cs.Nodes) != n || len(cs.Identities) != n || len(cs.IPs) != n || len(cs.Services) != n {
				return fmt.Errorf("cluster %s: %d nodes %d ids %d ips %d services, want %d each", name, len(cs.Nodes), len(cs.Identities), len(cs.IPs), len(cs.Services), n)
			}
		}
		return nil
	}
}

func TestThreeClustersSeeEachOtherSynced(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := memory.New()
	defer s.Close()
	names := []clustermesh.ClusterName{"a", "b", "c"}
	var ws []*remote.Watcher
	for i, n := range names {
		publishCluster(t, ctx, s, cluster(string(n), i+1), 10, 5*time.Second)
		ws = append(ws, runWatcher(t, ctx, s, n))
	}
	for i, w := range ws {
		var others []clustermesh.ClusterName
		for j, n := range names {
			if j != i {
				others = append(others, n)
			}
		}
		testenv.Eventually(t, 10*time.Second, syncedWith(w, 10, others...))
		if _, ok := w.Snapshot().Clusters[names[i]]; ok {
			t.Errorf("watcher of %s mirrors itself", names[i])
		}
		st := w.Status()
		if len(st) != 2 || !st[0].Synced || !st[0].Connected || st[0].Entries[clustermesh.KindIPs] != 10 {
			t.Errorf("status of %s's watcher: %+v", names[i], st)
		}
	}
}

func TestForgedEntriesAreRejectedAndCounted(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := memory.New()
	defer s.Close()
	b := cluster("b", 2)
	publishCluster(t, ctx, s, b, 3, 5*time.Second)
	w := runWatcher(t, ctx, s, "a")
	testenv.Eventually(t, 10*time.Second, syncedWith(w, 3, "b"))

	// Forged under b's prefix: identity in cluster 3's range.
	forged := clustermesh.Identity{ID: 3<<16 + 9, Cluster: "b", Labels: map[string]string{"app": "evil"}}
	val, _ := json.Marshal(forged)
	if err := s.Put(ctx, forged.Key(), val, 0); err != nil {
		t.Fatal(err)
	}
	// An IP entry claiming cluster c while under b's prefix.
	ip := clustermesh.IPEntry{Prefix: netip.MustParsePrefix("10.2.9.9/32"), Cluster: "c", Identity: 2<<16 + 1, HostIP: netip.MustParseAddr("192.168.2.1")}
	val, _ = json.Marshal(ip)
	if err := s.Put(ctx, clustermesh.KindPrefix(clustermesh.KindIPs, "b")+"10.2.9.9/32", val, 0); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		st := w.Status()
		if len(st) != 1 || st[0].Invalid != 2 {
			return fmt.Errorf("status %+v, want 2 invalid entries counted", st)
		}
		return nil
	})
	snap := w.Snapshot().Clusters["b"]
	if _, ok := snap.Identities[forged.ID]; ok {
		t.Fatal("forged identity was applied")
	}
	if len(snap.IPs) != 3 {
		t.Fatalf("%d IP entries, want 3 (forged one rejected)", len(snap.IPs))
	}
}

func TestDepartedClusterIsDrained(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := memory.New()
	defer s.Close()
	pctx, stopB := context.WithCancel(ctx)
	p := publishCluster(t, pctx, s, cluster("b", 2), 4, 2*time.Second)
	w := runWatcher(t, ctx, s, "a")
	changes := w.Subscribe(ctx)
	testenv.Eventually(t, 10*time.Second, syncedWith(w, 4, "b"))
	_ = p
	stopB() // the process dies: nothing renews the lease

	deletes, gone := 0, false
	timeout := time.After(10 * time.Second)
	for !gone {
		select {
		case ch := <-changes:
			switch ch.Type {
			case remote.Delete:
				deletes++
			case remote.ClusterGone:
				gone = true
			}
		case <-timeout:
			t.Fatalf("cluster b not gone after its lease TTL (%d deletes seen)", deletes)
		}
	}
	if deletes != 16 {
		t.Fatalf("%d deletes before ClusterGone, want 16 (every entry)", deletes)
	}
	st := w.Status()
	if len(st) != 1 || !st[0].Gone || st[0].Connected {
		t.Fatalf("status %+v, want b marked gone", st)
	}
	if _, ok := w.Snapshot().Clusters["b"]; ok {
		t.Fatal("b still in the snapshot")
	}
}

func TestRewriteOfSameValueIsNotAChange(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := memory.New()
	defer s.Close()
	b := cluster("b", 2)
	publishCluster(t, ctx, s, b, 2, 5*time.Second)
	w := runWatcher(t, ctx, s, "a")
	testenv.Eventually(t, 10*time.Second, syncedWith(w, 2, "b"))
	changes := w.Subscribe(ctx)
	kvs, _, _ := s.List(ctx, clustermesh.KindPrefix(clustermesh.KindNodes, "b"))
	for _, kv := range kvs {
		if err := s.Put(ctx, kv.Key, kv.Value, kv.Lease); err != nil {
			t.Fatal(err)
		}
	}
	// A real change after the rewrites: it must be the first change seen.
	n := clustermesh.Node{Name: "new", Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.99")}}
	val, _ := json.Marshal(n)
	_ = s.Put(ctx, n.Key(), val, 0)
	select {
	case ch := <-changes:
		if ch.Type != remote.Upsert || ch.Key != n.Key() {
			t.Fatalf("first change %v %s, want the upsert of the new node", ch.Type, ch.Key)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change seen")
	}
}
