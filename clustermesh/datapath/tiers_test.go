package datapath

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/bpf/bpftest"
	"github.com/braidmesh/braid/clustermesh"
)

func TestTierBands(t *testing.T) {
	// Bands per tier, in tier order node, zone, cluster, region, remote.
	for _, c := range []struct {
		aff  clustermesh.Affinity
		pref clustermesh.Topology
		want [bpf.NumTiers]int
	}{
		{clustermesh.AffinityNone, clustermesh.TopologyNone, [5]int{0, 0, 0, 0, 0}},
		{clustermesh.AffinityLocal, clustermesh.TopologyNone, [5]int{0, 0, 0, 1, 1}},
		{clustermesh.AffinityRemote, clustermesh.TopologyNone, [5]int{1, 1, 1, 0, 0}},
		{clustermesh.AffinityNone, clustermesh.TopologyZone, [5]int{0, 1, 2, 3, 4}},
		{clustermesh.AffinityLocal, clustermesh.TopologyZone, [5]int{0, 1, 2, 3, 4}},
		{clustermesh.AffinityRemote, clustermesh.TopologyZone, [5]int{2, 3, 4, 0, 1}},
		{clustermesh.AffinityNone, clustermesh.TopologyRegion, [5]int{0, 0, 0, 1, 2}},
		{clustermesh.AffinityLocal, clustermesh.TopologyRegion, [5]int{0, 0, 0, 1, 2}},
		{clustermesh.AffinityRemote, clustermesh.TopologyRegion, [5]int{2, 2, 2, 0, 1}},
	} {
		if got := tierBands(c.aff, c.pref); got != c.want {
			t.Errorf("affinity %s, topology %q: bands %v, want %v", c.aff, c.pref, got, c.want)
		}
		for _, b := range tierBands(c.aff, c.pref) {
			if b >= bpf.NumBands {
				t.Errorf("affinity %s, topology %q: band %d out of %d", c.aff, c.pref, b, bpf.NumBands)
			}
		}
	}
	topo := Topology{Node: "n1", Zone: "z1", Region: "r1", Cluster: "east"}
	for _, c := range []struct {
		b    Backend
		want bpf.Tier
	}{
		{Backend{Cluster: "east", Node: "n1", Zone: "z1"}, bpf.TierNode},
		{Backend{Cluster: "east", Node: "n2", Zone: "z1"}, bpf.TierZone},
		{Backend{Cluster: "east", Node: "n3", Zone: "z2"}, bpf.TierCluster},
		{Backend{Cluster: "west", Node: "n1", Zone: "z1", Region: "r1"}, bpf.TierRegion},
		{Backend{Cluster: "west", Node: "w1", Zone: "z1", Region: "r2"}, bpf.TierRemote},
		{Backend{Cluster: "west", Node: "w1"}, bpf.TierRemote},
	} {
		if got := topo.tier(c.b); got != c.want {
			t.Errorf("tier of %+v = %d, want %d", c.b, got, c.want)
		}
	}
	if got := (Topology{Cluster: "east"}).tier(Backend{Cluster: "west"}); got != bpf.TierRemote {
		t.Errorf("no region known: tier %d, want remote", got)
	}
}

// tierLab is a client namespace and one backend namespace holding two
// backends per tier, each answering TCP with its name ("node-0", ...).
type tierLab struct {
	client   netns.NsHandle
	backends []Backend
	names    map[netip.AddrPort]string
}

var tierNames = [bpf.NumTiers]string{"node", "zone", "cluster", "region", "remote"}

func newTierLab(t *testing.T) *tierLab {
	t.Helper()
	client, srv := bpftest.NetNS(t), bpftest.NetNS(t)
	p := netip.MustParsePrefix
	var addrs []netip.Prefix
	for i := range 2 * bpf.NumTiers {
		addrs = append(addrs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 203, 0, byte(11 + i)}), 24))
	}
	bpftest.Veth(t, client, "totiers", []netip.Prefix{p("10.203.0.1/24")}, srv, "eth0", addrs)
	lab := &tierLab{client: client, names: map[netip.AddrPort]string{}}
	var wg sync.WaitGroup
	var lns []net.Listener
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		wg.Wait()
	})
	for i, a := range addrs {
		tier := bpf.Tier(i / 2)
		name := fmt.Sprintf("%s-%d", tierNames[tier], i%2)
		ap := netip.AddrPortFrom(a.Addr(), bpftest.BackendPort)
		var ln net.Listener
		if err := bpftest.Do(srv, func() (err error) {
			ln, err = net.Listen("tcp", ap.String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, name+"\n")
				c.Close()
			}
		}()
		b := Backend{Addr: ap, Healthy: true}
		switch tier {
		case bpf.TierNode:
			b.Cluster, b.Node, b.Zone = "east", "n1", "z1"
		case bpf.TierZone:
			b.Cluster, b.Node, b.Zone = "east", "n2", "z1"
		case bpf.TierCluster:
			b.Cluster, b.Node, b.Zone = "east", "n3", "z2"
		case bpf.TierRegion:
			b.Cluster, b.Node, b.Zone, b.Region = "west", "w1", "z1", "r1"
		case bpf.TierRemote:
			b.Cluster, b.Node, b.Zone, b.Region = "south", "s1", "z1", "r2"
		}
		lab.backends = append(lab.backends, b)
		lab.names[ap] = name
	}
	return lab
}

// TestTierOrderRealConnections shows the tier order with real connections
// through the socket load balancer: for each affinity and topology
// preference, 1,000 connects are counted per backend while tiers lose
// their backends one by one (node unreachable by gossip, or not ready).
func TestTierOrderRealConnections(t *testing.T) {
	objs := loadObjs(t)
	lab := newTierLab(t)
	cg := bpftest.Cgroup(t)
	if err := objs.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.DetachCgroup(cg) })
	bpftest.EnterCgroup(t, cg)
	r, err := New(Config{Topology: Topology{Node: "n1", Zone: "z1", Region: "r1", Cluster: "east", ClusterID: 1}}, MapsOf(objs), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddrPort("10.96.7.1:80")
	const n = 1000

	// run reconciles the service with the backends of the tiers in down
	// cut off (their node unreachable) and counts answers per backend.
	run := func(aff clustermesh.Affinity, pref clustermesh.Topology, down ...bpf.Tier) map[string]int {
		t.Helper()
		svc := Service{Name: "web", Affinity: aff, Topology: pref, Frontends: []Frontend{{vip, clustermesh.TCP}}}
		for i, b := range lab.backends {
			b.NodeUnreachable = slices.Contains(down, bpf.Tier(i/2))
			svc.Backends = append(svc.Backends, b)
		}
		if err := r.Reconcile(context.Background(), Desired{Services: []Service{svc}}); err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for i := 0; i < n; i++ {
			name, peer, err := bpftest.Ask(lab.client, "tcp", vip)
			if err != nil || peer != vip {
				t.Fatalf("connect %d to %s: peer %s, %v", i, vip, peer, err)
			}
			got[name]++
		}
		t.Logf("affinity %-6s topology %-6q down %-22s %v", aff, pref, tierList(down), got)
		return got
	}
	// expect checks that exactly the backends of tiers got connections,
	// each at least half its fair share.
	expect := func(got map[string]int, tiers ...bpf.Tier) {
		t.Helper()
		fair := n / (2 * len(tiers))
		for name, c := range got {
			tier, _, _ := strings.Cut(name, "-")
			if !slices.ContainsFunc(tiers, func(x bpf.Tier) bool { return tierNames[x] == tier }) {
				t.Errorf("backend %s got %d connections; want only tiers %s", name, c, tierList(tiers))
			}
		}
		for _, tier := range tiers {
			for i := range 2 {
				if c := got[fmt.Sprintf("%s-%d", tierNames[tier], i)]; c < fair/2 {
					t.Errorf("backend %s-%d got %d of %d connections, want about %d", tierNames[tier], i, c, n, fair)
				}
			}
		}
	}
	node, zone, cluster, region, remote := bpf.TierNode, bpf.TierZone, bpf.TierCluster, bpf.TierRegion, bpf.TierRemote
	none, local, rem := clustermesh.AffinityNone, clustermesh.AffinityLocal, clustermesh.AffinityRemote

	t.Run("PreferClose", func(t *testing.T) {
		for _, aff := range []clustermesh.Affinity{none, local} {
			expect(run(aff, clustermesh.TopologyZone), node)
			expect(run(aff, clustermesh.TopologyZone, node), zone)
			expect(run(aff, clustermesh.TopologyZone, node, zone), cluster)
			expect(run(aff, clustermesh.TopologyZone, node, zone, cluster), region)
			expect(run(aff, clustermesh.TopologyZone, node, zone, cluster, region), remote)
		}
		expect(run(rem, clustermesh.TopologyZone), region)
		expect(run(rem, clustermesh.TopologyZone, region), remote)
		expect(run(rem, clustermesh.TopologyZone, region, remote), node)
		expect(run(rem, clustermesh.TopologyZone, region, remote, node), zone)
		expect(run(rem, clustermesh.TopologyZone, region, remote, node, zone), cluster)
	})
	t.Run("region", func(t *testing.T) {
		expect(run(none, clustermesh.TopologyRegion), node, zone, cluster)
		expect(run(none, clustermesh.TopologyRegion, node, zone, cluster), region)
		expect(run(none, clustermesh.TopologyRegion, node, zone, cluster, region), remote)
	})
	t.Run("affinity", func(t *testing.T) {
		expect(run(local, clustermesh.TopologyNone), node, zone, cluster)
		expect(run(local, clustermesh.TopologyNone, node, zone), cluster)
		expect(run(local, clustermesh.TopologyNone, node, zone, cluster), region, remote)
		expect(run(rem, clustermesh.TopologyNone), region, remote)
		expect(run(rem, clustermesh.TopologyNone, region), remote)
		expect(run(rem, clustermesh.TopologyNone, region, remote), node, zone, cluster)
		expect(run(none, clustermesh.TopologyNone), node, zone, cluster, region, remote)
		expect(run(none, clustermesh.TopologyNone, node, region), zone, cluster, remote)
	})
	t.Run("fallback", func(t *testing.T) {
		before, err := objs.Counters()
		if err != nil {
			t.Fatal(err)
		}
		// Every node unreachable: the ready backends serve, in their
		// bands, rather than none; each pick is counted.
		all := []bpf.Tier{node, zone, cluster, region, remote}
		expect(run(local, clustermesh.TopologyNone, all...), node, zone, cluster)
		expect(run(none, clustermesh.TopologyZone, all...), node)
		after, err := objs.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if d := after[bpf.CounterFallback] - before[bpf.CounterFallback]; d != 2*n {
			t.Errorf("fallback counter rose by %d, want %d", d, 2*n)
		}
		if st := r.Status(); st.Fallback != 1 {
			t.Errorf("status counts %d services in fallback, want 1", st.Fallback)
		}
		expect(run(local, clustermesh.TopologyNone, node), zone, cluster)
		if st := r.Status(); st.Fallback != 0 {
			t.Errorf("status counts %d services in fallback after recovery, want 0", st.Fallback)
		}
	})
}

func tierList(ts []bpf.Tier) string {
	var s []string
	for _, t := range ts {
		s = append(s, tierNames[t])
	}
	return "[" + strings.Join(s, ",") + "]"
}
