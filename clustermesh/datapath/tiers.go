package datapath

import (
	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
)

// tier places b relative to this node: same node, same zone (of this
// cluster), same cluster, another cluster in this node's region, any other
// cluster. An unknown zone or region matches nothing.
func (t Topology) tier(b Backend) bpf.Tier {
	switch {
	case b.Cluster != t.Cluster:
		if t.Region != "" && b.Region == t.Region {
			return bpf.TierRegion
		}
		return bpf.TierRemote
	case t.Node != "" && b.Node == t.Node:
		return bpf.TierNode
	case t.Zone != "" && b.Zone == t.Zone:
		return bpf.TierZone
	}
	return bpf.TierCluster
}

// tierBands returns, per tier, the band its backends occupy in a service
// with affinity aff and topology preference pref; the programs use the
// first band with a healthy backend and pick evenly within it.
//
// The affinity splits the tiers into a preferred and a fallback group
// (Cilium's semantics): local prefers this cluster's tiers (node, zone,
// cluster) and uses the others (region, remote) only when none of its
// backends is healthy, remote the reverse, none puts every tier in one
// group. The preference then splits each group: TopologyZone gives every
// tier its own band (node, zone, cluster, region, remote in that order),
// TopologyRegion separates this cluster, the region and the rest, and
// TopologyNone leaves the group one band, used evenly.
func tierBands(aff clustermesh.Affinity, pref clustermesh.Topology) (band [bpf.NumTiers]int) {
	local := []bpf.Tier{bpf.TierNode, bpf.TierZone, bpf.TierCluster}
	other := []bpf.Tier{bpf.TierRegion, bpf.TierRemote}
	var groups [][]bpf.Tier
	switch aff {
	case clustermesh.AffinityLocal:
		groups = [][]bpf.Tier{local, other}
	case clustermesh.AffinityRemote:
		groups = [][]bpf.Tier{other, local}
	default:
		groups = [][]bpf.Tier{append(local, other...)}
	}
	next := 0
	for _, g := range groups {
		prev := -1
		for _, tier := range g {
			key := 0 // TopologyNone: one band per group
			switch pref {
			case clustermesh.TopologyZone:
				key = int(tier)
			case clustermesh.TopologyRegion:
				key = max(int(tier), int(bpf.TierCluster))
			}
			if prev != -1 && key != prev {
				next++
			}
			prev = key
			band[tier] = next
		}
		next++
	}
	return band
}
