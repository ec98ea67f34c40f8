package datapath

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
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
		Policy: []PolicyRule{{Src: 2<<16 | 7, Dst: 1<<16 | 3, Port: 8080, Protocol: clustermesh.TCP, Deny: true}},
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
	if v4.Count != [4]uint16{1, 1, 1, 1} || v4.Affinity != bpf.AffinityLocal {
		t.Errorf("v4 service = %+v, want one healthy backend per tier, affinity local", v4)
	}
	v6 := f.services.m[bpf.ServiceKeyFor(ap("[fd00:96::1]:80"), 6)]
	if v6.Count != [4]uint16{0, 0, 0, 1} || v6.SvcId == v4.SvcId {
		t.Errorf("v6 service = %+v, want one remote backend and its own ID", v6)
	}
	// Slots are in tier order: node, zone, cluster, remote.
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
	if n := d.GetGauge().GetValue(); n != 3 {
		t.Errorf("ipcache entries metric = %v, want 3", n)
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
	if err := r.Reconcile(ctx, want); err != nil {
		t.Fatal(err)
	}
	if len(f.ipcache.m) != 1 {
		t.Errorf("ipcache has %d entries, want only the local one", len(f.ipcache.m))
	}
	v4 := f.services.m[bpf.ServiceKeyFor(ap("10.96.0.1:80"), 6)]
	if v4.Count != [4]uint16{0, 1, 1, 0} {
		t.Errorf("counts = %v, want zone and cluster only", v4.Count)
	}
	if v6, ok := f.services.m[bpf.ServiceKeyFor(ap("[fd00:96::1]:80"), 6)]; !ok || v6.Count != [4]uint16{} {
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
