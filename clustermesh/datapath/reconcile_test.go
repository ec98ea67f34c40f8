package datapath

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var topo = Topology{Node: "n1", Zone: "z1", Cluster: "east", ClusterID: 1, NodeIPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func sampleDesired() Desired {
	return Desired{
		ClusterIDs: map[clustermesh.ClusterName]clustermesh.ClusterID{"east": 1, "west": 2},
		IPCache: []clustermesh.IPEntry{
			{Prefix: netip.MustParsePrefix("10.2.0.5/32"), Cluster: "west", Identity: 2<<16 | 7, HostIP: netip.MustParseAddr("198.51.100.9")},
			{Prefix: netip.MustParsePrefix("fd00:2::/64"), Cluster: "west", Identity: 2<<16 | 8, HostIP: netip.MustParseAddr("198.51.100.9")},
		},
		Local: []LocalEntry{{Prefix: netip.MustParsePrefix("10.1.0.5/32"), Identity: 1<<16 | 3}},
		Services: []Service{{
			Name:      "web",
			Affinity:  clustermesh.AffinityLocal,
			Frontends: []Frontend{{ap("10.96.0.1:80"), clustermesh.TCP}, {ap("[fd00:96::1]:80"), clustermesh.TCP}},
			Backends: []Backend{
				{Addr: ap("10.1.0.5:8080"), Cluster: "east", Node: "n1", Zone: "z1", Healthy: true},
				{Addr: ap("10.1.1.5:8080"), Cluster: "east", Node: "n2", Zone: "z1", Healthy: true},
				{Addr: ap("10.1.2.5:8080"), Cluster: "east", Node: "n3", Zone: "z2", Healthy: true},
				{Addr: ap("10.2.0.5:8080"), Cluster: "west", Node: "w1", Zone: "z1", Healthy: true},
				{Addr: ap("10.2.0.6:8080"), Cluster: "west", Node: "w1", Zone: "z1", Healthy: false},
				{Addr: ap("[fd00:2::5]:8080"), Cluster: "west", Healthy: true},
			},
		}},
		Policy:   []clustermesh.PolicyRule{{Direction: clustermesh.PolicyIngress, Local: 1<<16 | 3, Peer: 2<<16 | 7, Port: 8080, EndPort: 8081, Protocol: clustermesh.TCP}},
		Isolated: []clustermesh.PolicyIsolation{{Direction: clustermesh.PolicyIngress, Identity: 1<<16 | 3}},
		Prefixes: []LocalEntry{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Identity: 0x100}},
	}
}

func TestReconcileLayoutAndIdempotence(t *testing.T) {
	f := newFakeMaps(1024)
	reg := prometheus.NewRegistry()
	r, err := New(Config{Topology: topo}, f.Maps(), nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.Reconcile(ctx, sampleDesired()); err != nil {
		t.Fatal(err)
	}
	first := r.Writes()
	if first == 0 {
		t.Fatal("first reconcile wrote nothing")
	}
	if err := r.Reconcile(ctx, sampleDesired()); err != nil {
		t.Fatal(err)
	}
	if got := r.Writes() - first; got != 0 {
		t.Errorf("second identical reconcile wrote %d entries, want 0", got)
	}

	v4 := f.services.m[bpf.ServiceKeyFor(ap("10.96.0.1:80"), 6)]
	if v4.Count != [bpf.NumBands]uint16{3, 1} || v4.Affinity != bpf.AffinityLocal {
		t.Errorf("v4 service = %+v, want this cluster's three backends in band 0, the remote one in band 1, affinity local", v4)
	}
	v6 := f.services.m[bpf.ServiceKeyFor(ap("[fd00:96::1]:80"), 6)]
	if v6.Count != [bpf.NumBands]uint16{0, 1} || v6.SvcId == v4.SvcId {
		t.Errorf("v6 service = %+v, want one remote backend in the fallback band and its own ID", v6)
	}
	// Slots are in band order, by address within a band.
	wantOrder := []string{"10.1.0.5:8080", "10.1.1.5:8080", "10.1.2.5:8080", "10.2.0.5:8080"}
	for i, w := range wantOrder {
		id := f.slots.m[bpf.SlotKey{SvcId: v4.SvcId, Slot: uint32(i)}]
		if got := f.backends.m[id].AddrPort().String(); got != w {
			t.Errorf("slot %d = %s, want %s", i, got, w)
		}
	}
	if len(f.backends.m) != 6 {
		t.Errorf("%d backends, want 6 (the unhealthy one kept, outside slots)", len(f.backends.m))
	}
	ipc := f.ipcache.m[bpf.IPCacheKeyFor(netip.MustParsePrefix("10.2.0.5/32"))]
	if ipc.Flags != bpf.IPCacheTunnel || ipc.ClusterId != 2 || bpf.WordsAddr(ipc.TunnelFamily, ipc.TunnelEndpoint).String() != "198.51.100.9" {
		t.Errorf("remote ipcache entry = %+v", ipc)
	}
	if loc := f.ipcache.m[bpf.IPCacheKeyFor(netip.MustParsePrefix("10.1.0.5/32"))]; loc.Flags != bpf.IPCacheLocal {
		t.Errorf("local ipcache entry = %+v", loc)
	}
	var d dto.Metric
	r.m.entries.WithLabelValues("ipcache").Write(&d)
	if n := d.GetGauge().GetValue(); n != 4 {
		t.Errorf("ipcache entries metric = %v, want 4 (two remote, one local, one address block)", n)
	}
	if blk := f.ipcache.m[bpf.IPCacheKeyFor(netip.MustParsePrefix("192.0.2.0/24"))]; blk.Identity != 0x100 || blk.Flags != 0 {
		t.Errorf("address block entry = %+v, want identity 0x100 without flags", blk)
	}
	// The isolation entry and the range 8080-8081 as one aligned block.
	if len(f.policy.m) != 2 {
		t.Errorf("policy holds %d entries, want 2: %+v", len(f.policy.m), f.policy.m)
	}
	if v := f.policy.m[bpf.PolicyIsolationKey(bpf.PolicyIngress, 1<<16|3)]; v.Action != bpf.PolicyDeny {
		t.Errorf("isolation entry = %+v, want deny", v)
	}
	if h := r.Health(); !h.OK {
		t.Errorf("health = %+v", h)
	}

	// A restarted agent (new Reconciler over the same maps) writes nothing.
	r2, _ := New(Config{Topology: topo}, f.Maps(), nil, nil)
	if err := r2.Reconcile(ctx, sampleDesired()); err != nil {
		t.Fatal(err)
	}
	if w := r2.Writes(); w != 1 { // only the config, which has no dump
		t.Errorf("restarted reconciler wrote %d, want 1 (config only)", w)
	}
}

func TestReconcilePrunesAndChanges(t *testing.T) {
	f := newFakeMaps(1024)
	r, _ := New(Config{Topology: topo}, f.Maps(), nil, nil)
	ctx := context.Background()
	want := sampleDesired()
	if err := r.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	// A leftover nobody asked for.
	f.ipcache.m[bpf.IPCacheKeyFor(netip.MustParsePrefix("10.9.9.0/24"))] = bpf.IPCacheValue{Identity: 99}
	// The local backend turns unhealthy; the west cluster leaves.
	want.Services[0].Backends[0].Healthy = false
	want.Services[0].Backends = want.Services[0].Backends[:3]
	want.IPCache = nil
	want.Prefixes = nil
	if err := r.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	if len(f.ipcache.m) != 1 {
		t.Errorf("ipcache has %d entries, want only the local one", len(f.ipcache.m))
	}
	v4 := f.services.m[bpf.ServiceKeyFor(ap("10.96.0.1:80"), 6)]
	if v4.Count != [bpf.NumBands]uint16{2} {
		t.Errorf("counts = %v, want zone and cluster only, in band 0", v4.Count)
	}
	if v6, ok := f.services.m[bpf.ServiceKeyFor(ap("[fd00:96::1]:80"), 6)]; !ok || v6.Count != [bpf.NumBands]uint16{} {
		t.Errorf("v6 frontend = %+v, %v; want it kept with no backends (connects refused)", v6, ok)
	}
	if len(f.slots.m) != 2 || len(f.backends.m) != 3 {
		t.Errorf("%d slots, %d backends; want 2 and 3", len(f.slots.m), len(f.backends.m))
	}
}

func TestReconcileDegradedThenRecovers(t *testing.T) {
	f := newFakeMaps(1024)
	r, _ := New(Config{Topology: topo}, f.Maps(), nil, nil)
	ctx := context.Background()
	f.ipcache.failErr = errors.New("injected")
	if err := r.Reconcile(ctx, sampleDesired()); err == nil {
		t.Fatal("want an error")
	}
	if h := r.Health(); h.OK || !strings.Contains(strings.Join(h.Reasons, ";"), "injected") {
		t.Errorf("health = %+v, want degraded with the cause", h)
	}
	f.ipcache.failErr = nil
	if err := r.Reconcile(ctx, sampleDesired()); err != nil {
		t.Fatal(err)
	}
	if h := r.Health(); !h.OK {
		t.Errorf("health after recovery = %+v", h)
	}
}

func TestPressure(t *testing.T) {
	f := newFakeMaps(10)
	r, _ := New(Config{Topology: topo}, f.Maps(), nil, nil)
	var want Desired
	for i := 0; i < 10; i++ {
		want.Local = append(want.Local, LocalEntry{Prefix: netip.MustParsePrefix(fmt.Sprintf("10.1.0.%d/32", i)), Identity: 5})
	}
	if err := r.Reconcile(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	h := r.Health()
	if h.OK || !strings.Contains(h.Reasons[0], "ipcache at 100%") {
		t.Errorf("health = %+v, want ipcache pressure", h)
	}
}

func TestPruneConntrack(t *testing.T) {
	f := newFakeMaps(1024)
	r, _ := New(Config{Topology: topo, CTTimeout: time.Minute}, f.Maps(), nil, nil)
	now := uint64(10 * time.Hour)
	r.monotonic = func() uint64 { return now }
	seen := func(ago time.Duration) bpf.CTValue { return bpf.CTValue{LastSeen: now - uint64(ago)} }
	key := func(proto uint8, sport uint16) bpf.CTKey {
		return bpf.CTKey{Proto: proto, Family: bpf.FamilyV4, Sport: bpf.Port(sport), Dport: bpf.Port(80)}
	}
	keep := []bpf.CTKey{key(6, 1), key(17, 2), key(6, 3)}
	drop := []bpf.CTKey{key(6, 4), key(17, 5), key(132, 6)}
	f.ct.m[keep[0]] = seen(time.Second)
	f.ct.m[keep[1]] = seen(59 * time.Second)
	f.ct.m[keep[2]] = seen(5 * time.Hour) // TCP: DefaultCTTimeoutTCP
	f.ct.m[drop[0]] = seen(7 * time.Hour)
	f.ct.m[drop[1]] = seen(61 * time.Second)
	f.ct.m[drop[2]] = seen(time.Hour)

	n, err := r.PruneConntrack()
	if err != nil || n != len(drop) {
		t.Fatalf("PruneConntrack = %d, %v; want %d deleted", n, err, len(drop))
	}
	for _, k := range keep {
		if _, ok := f.ct.m[k]; !ok {
			t.Errorf("entry %+v deleted though in use", k)
		}
	}
	if len(f.ct.m) != len(keep) {
		t.Errorf("%d entries left, want %d", len(f.ct.m), len(keep))
	}
	if n, err := r.PruneConntrack(); n != 0 || err != nil {
		t.Errorf("second PruneConntrack = %d, %v; want nothing to do", n, err)
	}
	if r.Writes() != 0 {
		t.Errorf("Writes = %d: pruning must not count as reconcile writes", r.Writes())
	}
}

// TestRunPrunesConntrack checks Run collects idle entries every
// ResyncInterval, before any desired state is known.
func TestRunPrunesConntrack(t *testing.T) {
	f := newFakeMaps(1024)
	r, _ := New(Config{Topology: topo, ResyncInterval: 10 * time.Millisecond}, f.Maps(), nil, nil)
	r.monotonic = func() uint64 { return uint64(time.Hour) }
	var mu sync.Mutex // guards f.ct.m against Run's deletes
	f.ct.mu = &mu
	mu.Lock()
	f.ct.m[bpf.CTKey{Proto: 17}] = bpf.CTValue{LastSeen: 1}
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if n := len(f.ct.m); n != 0 {
			return fmt.Errorf("Run did not prune the idle entry (%d entries)", n)
		}
		return nil
	})
}

func TestReconcileWritesConfig(t *testing.T) {
	f := newFakeMaps(1024)
	tp := topo
	tp.TunnelIfindex = 7
	r, _ := New(Config{Topology: tp, SocketLBNetnsCookie: 4096}, f.Maps(), nil, nil)
	if err := r.Reconcile(context.Background(), Desired{DefaultDeny: true}); err != nil {
		t.Fatal(err)
	}
	if want := (bpf.DatapathConfig{TunnelIfindex: 7, DefaultDeny: 1, NetnsCookie: 4096}); f.config.c != want {
		t.Errorf("config = %+v, want %+v", f.config.c, want)
	}
}

// TestKeepPolicyLeavesPolicyAlone: until the policies are known (a
// restarted agent), the policy trie and the address blocks stay.
func TestKeepPolicyLeavesPolicyAlone(t *testing.T) {
	f := newFakeMaps(1024)
	r, _ := New(Config{Topology: topo}, f.Maps(), nil, nil)
	ctx := context.Background()
	if err := r.Reconcile(ctx, sampleDesired()); err != nil {
		t.Fatal(err)
	}
	pol, blk := len(f.policy.m), bpf.IPCacheKeyFor(netip.MustParsePrefix("192.0.2.0/24"))
	want := sampleDesired()
	want.Policy, want.Isolated, want.Prefixes, want.KeepPolicy = nil, nil, nil, true
	if err := r.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.ipcache.m[blk]; !ok || len(f.policy.m) != pol {
		t.Errorf("kept policy: %d entries (want %d), block entry kept: %v", len(f.policy.m), pol, ok)
	}
	want.KeepPolicy = false
	if err := r.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.ipcache.m[blk]; ok || len(f.policy.m) != 0 {
		t.Errorf("known empty policy: %d entries, block entry kept: %v; want both gone", len(f.policy.m), ok)
	}
}

// TestReconcileReportsPolicyRevision: Status names the policy revision the
// maps hold only once a reconcile with it succeeded; KeepPolicy keeps it.
func TestReconcileReportsPolicyRevision(t *testing.T) {
	f := newFakeMaps(1024)
	r, _ := New(Config{Topology: topo}, f.Maps(), nil, nil)
	ctx := context.Background()
	want := sampleDesired()
	want.PolicyRevision = "r1"
	want.Isolated = []clustermesh.PolicyIsolation{{Direction: clustermesh.PolicyIngress, Identity: 1<<16 | 1}}
	if err := r.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := r.Status().PolicyRevision; got != "r1" {
		t.Fatalf("policy revision %q after a successful reconcile, want r1", got)
	}
	f.policy.failErr = errors.New("injected")
	want.PolicyRevision = "r2"
	want.Isolated = append(want.Isolated, clustermesh.PolicyIsolation{Direction: clustermesh.PolicyEgress, Identity: 1<<16 | 1})
	if err := r.Reconcile(ctx, want); err == nil {
		t.Fatal("reconcile with a failing policy map succeeded")
	}
	if got := r.Status().PolicyRevision; got != "r1" {
		t.Errorf("policy revision %q after a failed reconcile, want r1 still", got)
	}
	f.policy.failErr = nil
	keep := want
	keep.KeepPolicy, keep.PolicyRevision = true, ""
	if err := r.Reconcile(ctx, keep); err != nil {
		t.Fatal(err)
	}
	if got := r.Status().PolicyRevision; got != "r1" {
		t.Errorf("policy revision %q after a reconcile keeping the policy, want r1 still", got)
	}
	if err := r.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := r.Status().PolicyRevision; got != "r2" {
		t.Errorf("policy revision %q, want r2", got)
	}
}

// TestPolicyProtocols: a rule per protocol (TCP, UDP, SCTP) becomes allow
// entries for that IP protocol number only.
func TestPolicyProtocols(t *testing.T) {
	f := newFakeMaps(1024)
	r, _ := New(Config{Topology: topo}, f.Maps(), nil, nil)
	local, peer := clustermesh.NumericIdentity(1<<16|1), clustermesh.NumericIdentity(2<<16|1)
	want := sampleDesired()
	want.Isolated = []clustermesh.PolicyIsolation{{Direction: clustermesh.PolicyIngress, Identity: local}}
	want.Policy = nil
	protos := map[clustermesh.Protocol]uint8{clustermesh.TCP: 6, clustermesh.UDP: 17, clustermesh.SCTP: 132}
	for p := range protos {
		want.Policy = append(want.Policy, clustermesh.PolicyRule{Direction: clustermesh.PolicyIngress, Local: local, Peer: peer, Protocol: p, Port: 5000})
	}
	if err := r.Reconcile(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	for p, num := range protos {
		for _, k := range bpf.PolicyAllowKeys(bpf.PolicyIngress, uint32(local), uint32(peer), num, 5000, 5000) {
			if v, ok := f.policy.m[k]; !ok || v.Action != bpf.PolicyAllow {
				t.Errorf("%s/5000: allow entry %+v missing (%+v, %v)", p, k, v, ok)
			}
		}
	}
	if n := len(f.policy.m); n != 1+len(protos) {
		t.Errorf("%d policy entries, want the isolation and one per protocol", n)
	}
}
