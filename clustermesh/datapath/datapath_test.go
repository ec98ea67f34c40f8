package datapath

import (
	"context"
	"net/netip"
	"testing"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
)

func loadObjs(t testing.TB) *bpf.Objects {
	t.Helper()
	bpftest.RequireRoot(t)
	objs, err := bpf.Load(bpf.Config{PinDir: bpftest.PinDir(t), IPCacheEntries: 1 << 17, ServiceEntries: 1 << 14, BackendEntries: 1 << 16})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { objs.Unpin(); objs.Close() })
	return objs
}

// TestReconcileDrivesSocketLB checks the reconciler's layout end to end: the
// kernel picks backends by tier and health as Desired says.
func TestReconcileDrivesSocketLB(t *testing.T) {
	objs := loadObjs(t)
	lab := bpftest.NewLB(t)
	cg := bpftest.Cgroup(t)
	if err := objs.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.DetachCgroup(cg) })
	bpftest.EnterCgroup(t, cg)

	r, err := New(Config{Topology: Topology{Node: "n1", Zone: "z1", Cluster: "east", ClusterID: 1}}, MapsOf(objs), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		network       string
		proto         clustermesh.Protocol
		vip           netip.AddrPort
		local, remote netip.Addr
	}{
		{"tcp", clustermesh.TCP, netip.MustParseAddrPort("10.96.5.1:80"), lab.LocalV4, lab.RemoteV4},
		{"udp", clustermesh.UDP, netip.MustParseAddrPort("[fd00:96::5:1]:53"), lab.LocalV6, lab.RemoteV6},
	} {
		t.Run(c.network, func(t *testing.T) {
			desired := func(aff clustermesh.Affinity, localHealthy bool) Desired {
				return Desired{Services: []Service{{
					Name: "web", Affinity: aff,
					Frontends: []Frontend{{c.vip, c.proto}},
					Backends: []Backend{
						{Addr: netip.AddrPortFrom(c.local, bpftest.BackendPort), Cluster: "east", Node: "n1", Zone: "z1", Healthy: localHealthy},
						{Addr: netip.AddrPortFrom(c.remote, bpftest.BackendPort), Cluster: "west", Node: "w1", Zone: "z9", Healthy: true},
					},
				}}}
			}
			count := func(want Desired) map[string]int {
				t.Helper()
				if err := r.Reconcile(context.Background(), want); err != nil {
					t.Fatal(err)
				}
				got := map[string]int{}
				for i := 0; i < 1000; i++ {
					name, peer, err := bpftest.Ask(lab.Client, c.network, c.vip)
					if err != nil || peer.Addr().Unmap() != c.vip.Addr() {
						t.Fatalf("ask %s: peer %s, %v", c.vip, peer, err)
					}
					got[name]++
				}
				return got
			}
			if got := count(desired(clustermesh.AffinityLocal, true)); got["local"] != 1000 {
				t.Errorf("local affinity: %v, want all local", got)
			}
			if got := count(desired(clustermesh.AffinityLocal, false)); got["remote"] != 1000 {
				t.Errorf("local affinity, local unhealthy: %v, want all remote", got)
			}
			got := count(desired(clustermesh.AffinityNone, true))
			if got["local"] < 450 || got["remote"] < 450 {
				t.Errorf("no affinity: %v, want a split within 10%%", got)
			}
			before := r.Writes()
			if err := r.Reconcile(context.Background(), desired(clustermesh.AffinityNone, true)); err != nil {
				t.Fatal(err)
			}
			if w := r.Writes() - before; w != 0 {
				t.Errorf("repeat reconcile on kernel maps wrote %d entries", w)
			}
		})
	}
}
