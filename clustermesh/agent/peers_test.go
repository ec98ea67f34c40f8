package agent

import (
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/remote"
)

// TestDesiredPeersCarryTheKeyHandover: a remote node's next key and its
// acknowledgements reach the tunnel peer; the local cluster's nodes are no
// peers; a malformed acknowledgement is reported and skipped.
func TestDesiredPeersCarryTheKeyHandover(t *testing.T) {
	key := func() wgtypes.Key {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k.PublicKey()
	}
	cur, next, ack := key(), key(), key()
	ip := netip.MustParseAddr("192.168.2.1")
	snap := &remote.Snapshot{Clusters: map[clustermesh.ClusterName]*remote.ClusterState{
		"east": {Nodes: map[string]clustermesh.Node{"e1": {Name: "e1", Cluster: "east", IPs: []netip.Addr{netip.MustParseAddr("192.168.1.1")}, WireGuardKey: key().String()}}},
		"west": {Nodes: map[string]clustermesh.Node{"w1": {Name: "w1", Cluster: "west", IPs: []netip.Addr{ip},
			WireGuardKey: cur.String(), NextWireGuardKey: next.String(), PreparedWireGuardKeys: []string{ack.String(), "bad"}}}},
	}}
	peers, errs := DesiredPeers(snap, "east", 51820)
	if len(peers) != 1 {
		t.Fatalf("%d peers, want west/w1 only", len(peers))
	}
	p := peers[0]
	if p.Name != "west/w1" || p.PublicKey != cur || p.NextPublicKey != next || len(p.Prepared) != 1 || p.Prepared[0] != ack || p.Endpoint != netip.AddrPortFrom(ip, 51820) {
		t.Errorf("peer %+v", p)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "node west/w1: prepared wireguard key") {
		t.Errorf("errors %v, want one naming west/w1's prepared key", errs)
	}
}
