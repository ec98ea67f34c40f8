package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/relay"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

func cluster(name string, id int) clustermesh.ClusterConfig {
	return clustermesh.ClusterConfig{
		Name:     clustermesh.ClusterName(name),
		ID:       clustermesh.ClusterID(id),
		PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id), 0, 0}), 16)},
	}
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

// records are n nodes, identities, IP entries and services of c.
func records(c clustermesh.ClusterConfig, n int) map[clustermesh.Kind][]publish.Record {
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
	return map[clustermesh.Kind][]publish.Record{clustermesh.KindNodes: ns, clustermesh.KindIdentities: ids,
		clustermesh.KindIPs: ips, clustermesh.KindServices: svcs}
}

// publishCluster grants c and runs its publisher with n entries of every
// kind until ctx is done.
func publishCluster(t *testing.T, ctx context.Context, s kvstore.Store, c clustermesh.ClusterConfig, n int) *publish.Publisher {
	t.Helper()
	putGrant(t, s, c)
	p, err := newPublisher(c, s)
	if err != nil {
		t.Fatal(err)
	}
	for kind, recs := range records(c, n) {
		if err := p.Replace(kind, recs); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("publisher %s: %v", c.Name, err)
		}
	}()
	t.Cleanup(func() { <-done })
	return p
}

// lab is a broker (a real etcd) with a relay in front of it.
type lab struct {
	t        *testing.T
	upstream *etcd.Store
	dir      string
	listen   string
}

func newLab(t *testing.T) *lab {
	l, _ := newLabServer(t)
	return l
}

func newLabServer(t *testing.T) (*lab, *etcdtest.Server) {
	srv := etcdtest.Start(t)
	up, err := etcd.New(t.Context(), etcd.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return &lab{t: t, upstream: up, dir: t.TempDir(), listen: fmt.Sprintf("https://127.0.0.1:%d", testenv.FreePort(t))}, srv
}

// runningRelay is one run of the relay; stop ends it and waits.
type runningRelay struct {
	*relay.Relay
	upstream *remote.Watcher
	stop     func()
}

// start runs a relay over the lab's broker, with its own broker
// connection (through endpoints if given), and waits until it serves.
func (l *lab) start(endpoints ...string) *runningRelay {
	t := l.t
	t.Helper()
	if len(endpoints) == 0 {
		endpoints = l.upstream.Client().Endpoints()
	}
	conn, err := etcd.New(t.Context(), etcd.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w, err := remote.New(remote.Config{}, conn, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(relay.Config{Cluster: "local", Upstream: w, Listen: []string{l.listen}, DataDir: l.dir,
		HeartbeatInterval: 10 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once bool
	stop := func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
		conn.Close()
	}
	t.Cleanup(stop)
	select {
	case <-r.Ready():
	case err := <-done:
		once = true
		t.Fatalf("relay: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("relay not ready after 30s")
	}
	return &runningRelay{Relay: r, upstream: w, stop: stop}
}

// consumer is an agent's Watcher reading the relay with the agents' bundle.
func consumer(t *testing.T, ctx context.Context, creds join.Credentials) (*remote.Watcher, *etcd.Store) {
	t.Helper()
	s, err := join.Connect(ctx, creds, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	w, err := remote.New(remote.Config{}, s, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(ctx)
	}()
	t.Cleanup(func() { <-done })
	return w, s
}

// synced waits until w shows cluster name synced with n entries of
// every kind.
func synced(w *remote.Watcher, name clustermesh.ClusterName, n int) func() error {
	return func() error {
		cs := w.Snapshot().Clusters[name]
		if cs == nil || !cs.Synced {
			return fmt.Errorf("cluster %s not synced", name)
		}
		if len(cs.Nodes) != n || len(cs.Identities) != n || len(cs.IPs) != n || len(cs.Services) != n {
			return fmt.Errorf("cluster %s: %d nodes %d ids %d ips %d services, want %d each", name, len(cs.Nodes), len(cs.Identities), len(cs.IPs), len(cs.Services), n)
		}
		return nil
	}
}

// mirrorKeys lists the mirror's keys of cluster name.
func mirrorKeys(t *testing.T, s kvstore.Store, name clustermesh.ClusterName) []string {
	t.Helper()
	kvs, _, err := s.List(t.Context(), clustermesh.Root)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range kvs {
		if pk, err := clustermesh.ParseKey(kv.Key); err == nil && pk.Cluster == name {
			out = append(out, kv.Key)
		}
	}
	return out
}

// TestRelayMirrorsTheValidatedMesh: a consumer reading only the relay sees
// a remote cluster synced, its updates and deletes; a forged entry never
// reaches the mirror; a cluster that leaves vanishes from it.
func TestRelayMirrorsTheValidatedMesh(t *testing.T) {
	ctx := t.Context()
	l := newLab(t)
	b, c := cluster("b", 2), cluster("c", 3)
	pb := publishCluster(t, ctx, l.upstream, b, 5)
	pc := publishCluster(t, ctx, l.upstream, c, 3)

	r := l.start()
	w, mirror := consumer(t, ctx, r.AgentCredentials())
	testenv.Eventually(t, 30*time.Second, synced(w, "b", 5))
	testenv.Eventually(t, 30*time.Second, synced(w, "c", 3))
	// A forged entry under c's prefix, outside c's pod CIDR, then a valid
	// one of the same kind: once the consumer has the valid one, the
	// relay has handled the forged one, which came first.
	forged := &clustermesh.IPEntry{Prefix: netip.MustParsePrefix("10.2.0.99/32"), Cluster: c.Name, Identity: mustFirst(c),
		HostIP: netip.MustParseAddr("192.168.3.1")}
	fv, _ := json.Marshal(forged)
	if err := l.upstream.Put(ctx, forged.Key(), fv, 0); err != nil {
		t.Fatal(err)
	}
	valid := &clustermesh.IPEntry{Prefix: netip.MustParsePrefix("10.3.0.99/32"), Cluster: c.Name, Identity: mustFirst(c),
		HostIP: netip.MustParseAddr("192.168.3.1")}
	if err := pc.Upsert(valid); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if _, ok := w.Snapshot().Clusters["c"].IPs[valid.Prefix]; !ok {
			return errors.New("valid entry not mirrored yet")
		}
		return nil
	})
	rejected := 0
	for _, st := range r.upstream.Status() {
		if st.Name == "c" {
			rejected = st.Invalid
		}
	}
	if rejected == 0 {
		t.Fatal("the relay's Watcher did not reject the forged entry: the test proves nothing")
	}
	if _, err := mirror.Get(ctx, forged.Key()); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("forged entry in the mirror: err %v, want not found", err)
	}

	// Every mirrored key of b is bound to one relay-local lease.
	kvs, _, err := mirror.List(ctx, clustermesh.Root)
	if err != nil {
		t.Fatal(err)
	}
	leases := map[kvstore.LeaseID]bool{}
	for _, kv := range kvs {
		if pk, _ := clustermesh.ParseKey(kv.Key); pk.Cluster == "b" {
			leases[kv.Lease] = true
		}
	}
	if len(leases) != 1 || leases[0] {
		t.Fatalf("b's mirrored keys are bound to leases %v, want one lease", leases)
	}

	// An update and a delete propagate.
	changed := &clustermesh.Node{Name: "n1", Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.201")}}
	if err := pb.Upsert(changed); err != nil {
		t.Fatal(err)
	}
	pb.Delete((&clustermesh.Identity{ID: mustFirst(b), Cluster: "b"}).Key())
	testenv.Eventually(t, 30*time.Second, func() error {
		cs := w.Snapshot().Clusters["b"]
		if cs == nil {
			return errors.New("b gone")
		}
		if n := cs.Nodes["n1"]; len(n.IPs) != 1 || n.IPs[0] != changed.IPs[0] {
			return fmt.Errorf("n1 has IPs %v, want %v", n.IPs, changed.IPs)
		}
		if _, ok := cs.Identities[mustFirst(b)]; ok {
			return errors.New("deleted identity still there")
		}
		return nil
	})

	// c leaves (the broker removes its grant): it vanishes from the mirror.
	if err := l.upstream.Delete(ctx, clustermesh.GrantKey("c")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if cs := w.Snapshot().Clusters["c"]; cs != nil {
			return errors.New("c still mirrored to the consumer")
		}
		if keys := mirrorKeys(t, mirror, "c"); len(keys) > 0 {
			return fmt.Errorf("c's keys still in the mirror: %v", keys)
		}
		return nil
	})
	if cs := w.Snapshot().Clusters["b"]; cs == nil || !cs.Synced || len(cs.Nodes) != 5 {
		t.Fatalf("b after c left: %+v, want synced with 5 nodes", cs)
	}
}

func mustFirst(c clustermesh.ClusterConfig) clustermesh.NumericIdentity {
	first, _ := c.IdentityRange()
	return first
}

// TestRelayRestartConverges stops the relay while its consumer keeps
// running, changes the mesh behind it (an update, a delete, a cluster
// leaving), and starts it again on the same data: the consumer converges,
// and every key still valid stayed in the mirror throughout (its create
// revision is unchanged: it was never deleted and written again).
func TestRelayRestartConverges(t *testing.T) {
	ctx := t.Context()
	l := newLab(t)
	b, d, e := cluster("b", 2), cluster("d", 4), cluster("e", 5)
	pb := publishCluster(t, ctx, l.upstream, b, 5)
	publishCluster(t, ctx, l.upstream, d, 2)
	ectx, stopE := context.WithCancel(ctx)
	publishCluster(t, ectx, l.upstream, e, 2)
	r := l.start()
	w, mirror := consumer(t, ctx, r.AgentCredentials())
	testenv.Eventually(t, 30*time.Second, synced(w, "b", 5))
	testenv.Eventually(t, 30*time.Second, synced(w, "d", 2))
	testenv.Eventually(t, 30*time.Second, synced(w, "e", 2))
	before := map[string]kvstore.KeyValue{}
	kvs, _, err := mirror.List(ctx, clustermesh.Root)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		before[kv.Key] = kv
	}

	r.stop()
	// Behind the stopped relay: n1 changes, n4 goes, d leaves.
	changed := &clustermesh.Node{Name: "n1", Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.201")}}
	if err := pb.Upsert(changed); err != nil {
		t.Fatal(err)
	}
	gone := (&clustermesh.Node{Name: "n4", Cluster: "b"}).Key()
	pb.Delete(gone)
	if err := l.upstream.Delete(ctx, clustermesh.GrantKey("d")); err != nil {
		t.Fatal(err)
	}
	// e stops publishing its services' single-value layout (as a
	// publisher switched to chunks only does): its marker and values go.
	stopE()
	v1, _, err := l.upstream.List(ctx, clustermesh.KindPrefix(clustermesh.KindServices, "e"))
	if err != nil || len(v1) == 0 {
		t.Fatalf("e's single-value services: %d, %v", len(v1), err)
	}
	for _, kv := range append(v1, kvstore.KeyValue{Key: clustermesh.SyncedKey("e", clustermesh.KindServices)}) {
		if err := l.upstream.Delete(ctx, kv.Key); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if _, err := l.upstream.Get(ctx, gone); !errors.Is(err, kvstore.ErrNotFound) {
			return fmt.Errorf("%s still published", gone)
		}
		return nil
	})
	// The consumer, cut off from its relay, keeps what it had.
	if err := synced(w, "b", 5)(); err != nil {
		t.Fatalf("consumer during the relay outage: %v", err)
	}
	if err := synced(w, "d", 2)(); err != nil {
		t.Fatalf("consumer during the relay outage: %v", err)
	}

	r = l.start()
	testenv.Eventually(t, 30*time.Second, func() error {
		st := r.Status()
		if !st.MeshListed || st.Relisted["b"] < 5 || st.Relisted["e"] < 5 {
			return fmt.Errorf("relay not re-listed yet: %+v", st)
		}
		cs := w.Snapshot().Clusters["b"]
		if cs == nil || len(cs.Nodes) != 4 {
			return fmt.Errorf("consumer's b: %+v, want 4 nodes", cs)
		}
		if n := cs.Nodes["n1"]; len(n.IPs) != 1 || n.IPs[0] != changed.IPs[0] {
			return fmt.Errorf("n1 has IPs %v, want %v", n.IPs, changed.IPs)
		}
		if w.Snapshot().Clusters["d"] != nil {
			return errors.New("d still at the consumer")
		}
		return nil
	})
	if keys := mirrorKeys(t, mirror, "d"); len(keys) > 0 {
		t.Fatalf("d's keys still in the mirror: %v", keys)
	}
	for _, key := range mirrorKeys(t, mirror, "e") {
		if pk, _ := clustermesh.ParseKey(key); pk.Kind == clustermesh.KindServices || pk.Synced && pk.Name == string(clustermesh.KindServices) {
			t.Errorf("%s: e no longer publishes it, but it is still in the mirror", key)
		}
	}
	if err := synced(w, "e", 2)(); err != nil {
		t.Errorf("consumer's e, from its chunked services alone: %v", err)
	}
	kvs, _, err = mirror.List(ctx, clustermesh.Root)
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, kv := range kvs {
		if pk, _ := clustermesh.ParseKey(kv.Key); pk.Cluster != "b" {
			continue
		}
		old, ok := before[kv.Key]
		if !ok {
			t.Errorf("%s: new in the mirror after the restart", kv.Key)
			continue
		}
		if kv.CreateRevision != old.CreateRevision {
			t.Errorf("%s: deleted and written again across the restart (create revision %d, was %d)", kv.Key, kv.CreateRevision, old.CreateRevision)
		}
		if kv.Lease != old.Lease {
			t.Errorf("%s: bound to lease %x, was %x: the relay did not keep b's lease", kv.Key, kv.Lease, old.Lease)
		}
		kept++
	}
	if kept == 0 {
		t.Fatal("no key of b in the mirror")
	}
	if _, ok := before[gone]; !ok {
		t.Fatalf("%s was not in the mirror before the restart", gone)
	}
	if _, err := mirror.Get(ctx, gone); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("%s: err %v, want not found after the restart", gone, err)
	}
}

// TestRelayUpstreamReconnectDoesNotFlush cuts the relay off from the
// broker, changes and compacts behind its back, and lets it back: the
// relay's Watcher re-lists, and the mirror changes exactly the changed
// key and the deleted one; every other key keeps its create revision.
func TestRelayUpstreamReconnectDoesNotFlush(t *testing.T) {
	ctx := t.Context()
	l, srv := newLabServer(t)
	proxy := etcdtest.NewProxy(t, srv.Addr())
	b := cluster("b", 2)
	pb := publishCluster(t, ctx, l.upstream, b, 5)
	r := l.start(proxy.Endpoints()...)
	w, mirror := consumer(t, ctx, r.AgentCredentials())
	testenv.Eventually(t, 30*time.Second, synced(w, "b", 5))
	before := map[string]kvstore.KeyValue{}
	kvs, _, err := mirror.List(ctx, clustermesh.Root)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		before[kv.Key] = kv
	}
	// The test reads the relay's stream too: the same events in the same
	// order as the relay gets them.
	tctx, stopTap := context.WithCancel(ctx)
	defer stopTap()
	tap := r.upstream.Entries(tctx)

	proxy.Partition()
	changed := &clustermesh.Node{Name: "n1", Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.201")}}
	if err := pb.Upsert(changed); err != nil {
		t.Fatal(err)
	}
	gone := (&clustermesh.Node{Name: "n2", Cluster: "b"}).Key()
	pb.Delete(gone)
	testenv.Eventually(t, 30*time.Second, func() error {
		if _, err := l.upstream.Get(ctx, gone); !errors.Is(err, kvstore.ErrNotFound) {
			return fmt.Errorf("%s still published", gone)
		}
		kv, err := l.upstream.Get(ctx, changed.Key())
		if err != nil || !strings.Contains(string(kv.Value), "192.168.2.201") {
			return fmt.Errorf("n1 not changed yet (%v)", err)
		}
		return nil
	})
	_, rev, err := l.upstream.List(ctx, clustermesh.Root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.upstream.Client().Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	proxy.Heal()

	// Every kind of b re-listed (its marker comes again), then a sentinel
	// change: once the consumer has it, the relay applied the re-lists.
	relisted := map[string]bool{}
	deadline := time.After(time.Minute)
	for len(relisted) < len(clustermesh.Kinds) {
		select {
		case ev := <-tap:
			if pk, err := clustermesh.ParseKey(ev.Key); err == nil && pk.Synced && pk.Cluster == "b" {
				relisted[ev.Key] = true
			}
		case <-deadline:
			t.Fatalf("relay's Watcher did not re-list every kind of b after the partition: %v", relisted)
		}
	}
	sentinel := &clustermesh.Node{Name: "sentinel", Cluster: "b", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.250")}}
	if err := pb.Upsert(sentinel); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		cs := w.Snapshot().Clusters["b"]
		if cs == nil {
			return errors.New("b gone")
		}
		if _, ok := cs.Nodes["sentinel"]; !ok {
			return errors.New("sentinel not at the consumer yet")
		}
		return nil
	})
	cs := w.Snapshot().Clusters["b"]
	if _, ok := cs.Nodes["n2"]; ok {
		t.Error("n2 still at the consumer")
	}
	if n := cs.Nodes["n1"]; len(n.IPs) != 1 || n.IPs[0] != changed.IPs[0] {
		t.Errorf("n1 has IPs %v, want %v", n.IPs, changed.IPs)
	}
	kvs, _, err = mirror.List(ctx, clustermesh.Root)
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, kv := range kvs {
		old, ok := before[kv.Key]
		if !ok {
			if kv.Key != sentinel.Key() {
				t.Errorf("%s: new in the mirror", kv.Key)
			}
			continue
		}
		if kv.CreateRevision != old.CreateRevision {
			t.Errorf("%s: deleted and written again (create revision %d, was %d)", kv.Key, kv.CreateRevision, old.CreateRevision)
		}
		if kv.Key != changed.Key() && kv.ModRevision != old.ModRevision {
			t.Errorf("%s: rewritten though unchanged (mod revision %d, was %d)", kv.Key, kv.ModRevision, old.ModRevision)
		}
		kept++
	}
	if kept < len(before)-1 {
		t.Errorf("%d keys kept of %d", kept, len(before))
	}
}

func newPublisher(c clustermesh.ClusterConfig, s kvstore.Store) (*publish.Publisher, error) {
	return publish.New(publish.Config{Cluster: c, LeaseTTL: 30 * time.Second}, s, nil, nil)
}
