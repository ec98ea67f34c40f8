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
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// TestReconnectAfterCompactionDoesNotFlush cuts a watcher off from a real
// etcd, changes, deletes and compacts behind its back, and lets it back: it
// must re-list and report exactly what changed — one update, one delete —
// and nothing for the entries that stayed.
func TestReconnectAfterCompactionDoesNotFlush(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	srv := etcdtest.Start(t)
	proxy := etcdtest.NewProxy(t, srv.Addr())
	direct, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	viaProxy, err := etcd.New(ctx, etcd.Config{Endpoints: proxy.Endpoints(), DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer viaProxy.Close()

	b := cluster("b", 2)
	pub := publishCluster(t, ctx, direct, b, 5, 30*time.Second)
	w := runWatcher(t, ctx, viaProxy, "a")
	testenv.Eventually(t, 20*time.Second, syncedWith(w, 5, "b"))
	changes := w.Subscribe(ctx)

	proxy.Partition()
	put := func(n clustermesh.Node) {
		val, _ := json.Marshal(n)
		kv, err := direct.Get(ctx, n.Key())
		if err != nil {
			t.Fatal(err)
		}
		if err := direct.Put(ctx, n.Key(), val, kv.Lease); err != nil {
			t.Fatal(err)
		}
	}
	changed := clustermesh.Node{Name: "n1", Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.201")}}
	put(changed)
	gone := (&clustermesh.Node{Name: "n2", Cluster: "b"}).Key()
	if err := direct.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	// Compact past everything, so the watcher cannot resume and must
	// re-list.
	_, rev, err := direct.List(ctx, clustermesh.Root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Client().Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	proxy.Heal()

	got := map[string]remote.ChangeType{}
	deadline := time.After(30 * time.Second)
	for len(got) < 2 {
		select {
		case ch := <-changes:
			if ch.Type == remote.Upsert || ch.Type == remote.Delete {
				if prev, dup := got[ch.Key]; dup {
					t.Fatalf("%s reported twice (%v, %v)", ch.Key, prev, ch.Type)
				}
				got[ch.Key] = ch.Type
			}
		case <-deadline:
			t.Fatalf("after reconnect saw %v, want the update of n1 and the delete of n2; status %+v", got, w.Status())
		}
	}
	want := map[string]remote.ChangeType{changed.Key(): remote.Upsert, gone: remote.Delete}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("changes after reconnect %v, want %v", got, want)
	}
	// Nothing else follows: the 18 unchanged entries were not flushed.
	// Sync point: a marker published after the reconnect in every kind
	// (each kind is its own watch) is the next change of that kind.
	first, _ := b.IdentityRange()
	markerIP := netip.MustParseAddr("10.2.0.250")
	markers := []publish.Record{
		&clustermesh.Node{Name: "marker", Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.250")}},
		&clustermesh.Identity{ID: first + 250, Cluster: "b", Labels: map[string]string{"app": "marker"}},
		&clustermesh.IPEntry{Prefix: netip.PrefixFrom(markerIP, 32), Cluster: "b", Identity: first + 250, HostIP: netip.MustParseAddr("192.168.2.250")},
		&clustermesh.Service{Cluster: "b", Namespace: "default", Name: "marker", Global: true, Shared: true,
			Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{{Port: 80, Protocol: clustermesh.TCP}},
			Backends: []clustermesh.Backend{{IP: markerIP, Ports: []clustermesh.BackendPort{{Port: 8080}}, Ready: true, Serving: true}}},
	}
	pending := map[string]bool{}
	for _, m := range markers {
		if err := pub.Upsert(m); err != nil {
			t.Fatal(err)
		}
		pending[m.Key()] = true
	}
	deadline = time.After(30 * time.Second)
	for len(pending) > 0 {
		select {
		case ch := <-changes:
			if ch.Type != remote.Upsert && ch.Type != remote.Delete {
				continue
			}
			if !pending[ch.Key] || ch.Type != remote.Upsert {
				t.Fatalf("unexpected change %v %s before the markers %v", ch.Type, ch.Key, pending)
			}
			delete(pending, ch.Key)
		case <-deadline:
			t.Fatalf("markers %v not seen; status %+v", pending, w.Status())
		}
	}
	snap := w.Snapshot().Clusters["b"]
	if len(snap.Nodes) != 5 || len(snap.IPs) != 6 || len(snap.Services) != 6 || snap.Nodes["n1"].IPs[0] != changed.IPs[0] {
		t.Fatalf("state after reconnect: %d nodes (n1 %v), %d IPs, %d services", len(snap.Nodes), snap.Nodes["n1"].IPs, len(snap.IPs), len(snap.Services))
	}
}
