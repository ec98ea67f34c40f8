package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/tunnel"
)

// DesiredPeers returns one WireGuard peer for every node of every other
// cluster that has published a WireGuard key: cross-cluster traffic is
// encrypted node to node, with no gateway. port is the mesh's WireGuard
// port. Nodes whose key does not parse are skipped and reported.
func DesiredPeers(snap *remote.Snapshot, local clustermesh.ClusterName, port uint16) ([]tunnel.Peer, []error) {
	var (
		peers []tunnel.Peer
		errs  []error
	)
	for cname, cs := range snap.Clusters {
		if cname == local {
			continue
		}
		for _, n := range cs.Nodes {
			if n.WireGuardKey == "" || len(n.IPs) == 0 {
				continue
			}
			key, err := wgtypes.ParseKey(n.WireGuardKey)
			if err != nil {
				errs = append(errs, fmt.Errorf("node %s/%s: wireguard key: %w", cname, n.Name, err))
				continue
			}
			p := tunnel.Peer{
				Name:      string(cname) + "/" + n.Name,
				PublicKey: key,
				Endpoint:  netip.AddrPortFrom(n.IPs[0], port),
				PodCIDRs:  slices.Clone(n.PodCIDRs),
			}
			// The key handover: the node's next key (installed on standby)
			// and the next keys it has installed (its acknowledgements).
			if n.NextWireGuardKey != "" {
				if p.NextPublicKey, err = wgtypes.ParseKey(n.NextWireGuardKey); err != nil {
					errs = append(errs, fmt.Errorf("node %s/%s: next wireguard key: %w", cname, n.Name, err))
				}
			}
			for _, s := range n.PreparedWireGuardKeys {
				k, err := wgtypes.ParseKey(s)
				if err != nil {
					errs = append(errs, fmt.Errorf("node %s/%s: prepared wireguard key: %w", cname, n.Name, err))
					continue
				}
				p.Prepared = append(p.Prepared, k)
			}
			peers = append(peers, p)
		}
	}
	slices.SortFunc(peers, func(a, b tunnel.Peer) int { return strings.Compare(a.Name, b.Name) })
	return peers, errs
}
