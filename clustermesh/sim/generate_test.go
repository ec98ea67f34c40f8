package sim_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/sim"
)

// TestGenerateAcrossTheIDSpace: clusters at both ends of the ID space, with
// pod CIDRs just large enough for their nodes, generate states the
// consumers' decoders accept, with node IPs no other cluster uses.
func TestGenerateAcrossTheIDSpace(t *testing.T) {
	nodeIPs := map[netip.Addr]clustermesh.ClusterID{}
	for _, id := range []clustermesh.ClusterID{1, 44, 255, 256, 300, 511} {
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id >> 3), byte(id&7) << 5, 0}), 19)
		cfg := clustermesh.ClusterConfig{Name: clustermesh.ClusterName(fmt.Sprintf("c%d", id)), ID: id, PodCIDRs: []netip.Prefix{cidr}}
		st, err := sim.Generate(cfg, 32, 11, []string{"a", "b"})
		if err != nil {
			t.Fatalf("cluster %d: %v", id, err)
		}
		recs, err := st.Records(&cfg)
		if err != nil {
			t.Fatalf("cluster %d: %v", id, err)
		}
		if got := len(recs[clustermesh.KindNodes]); got != 32 {
			t.Errorf("cluster %d: %d nodes, want 32", id, got)
		}
		if got := len(recs[clustermesh.KindIPs]); got != 32*11 {
			t.Errorf("cluster %d: %d IP entries, want %d", id, got, 32*11)
		}
		for _, n := range st.Nodes {
			if !cidr.Contains(n.PodCIDRs[0].Addr()) {
				t.Errorf("cluster %d: node %s's pod CIDR %s is outside %s", id, n.Name, n.PodCIDRs[0], cidr)
			}
			ip := n.IPs[0]
			if other, ok := nodeIPs[ip]; ok {
				t.Errorf("node IP %s of cluster %d is cluster %d's too", ip, id, other)
			}
			nodeIPs[ip] = id
		}
	}
}

func TestGenerateRefusesAPodCIDRTooSmall(t *testing.T) {
	cfg := clustermesh.ClusterConfig{Name: "small", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/20")}}
	if _, err := sim.Generate(cfg, 17, 2, nil); err == nil {
		t.Error("17 nodes in a /20 (16 /24s): no error")
	}
	if _, err := sim.Generate(cfg, 16, 2, nil); err != nil {
		t.Errorf("16 nodes in a /20: %v", err)
	}
}
