package clustermesh

import (
	"fmt"
	"strings"
	"time"
)

// nodeStatusSegment holds the per-node status agents publish.
const nodeStatusSegment = "nodestatus"

// NodeStatusPrefix is where cluster's agents publish their NodeStatus, one
// key per node. It is not an OwnedPrefixes entry: the operator's publisher
// does not manage it; each agent writes its own key, bound to its own lease.
func NodeStatusPrefix(cluster ClusterName) string {
	return Root + nodeStatusSegment + "/" + string(cluster) + "/"
}

// NodeStatusKey is where node's agent publishes its status.
func NodeStatusKey(cluster ClusterName, node string) string { return NodeStatusPrefix(cluster) + node }

// AgentPrefixes lists the prefixes a cluster's agents write, besides what
// the operator owns (OwnedPrefixes). Each ends in "/".
func AgentPrefixes(cluster ClusterName) []string { return []string{NodeStatusPrefix(cluster)} }

// Bounds on a NodeStatus, so a misbehaving cluster cannot bloat the pages
// that show it.
const (
	MaxNodeStatusPeers    = 4096
	MaxNodeStatusProblems = 16
	maxProblemLen         = 512
)

// NodeStatus is the small, rate-limited status an agent publishes about its
// node: its tunnels and gossip health. It is stored at NodeStatusKey.
type NodeStatus struct {
	Cluster ClusterName `json:"cluster"`
	Node    string      `json:"node"`
	// Time is when the agent took the status.
	Time time.Time `json:"time"`
	// Synced is true once the agent has applied every remote cluster's
	// full state to its datapath.
	Synced bool `json:"synced"`
	// Peers are the node's WireGuard peers.
	Peers []TunnelPeer `json:"peers,omitempty"`
	// GossipMembers and GossipAlive count the nodes the agent's gossip sees
	// and how many of them answer; both zero without gossip.
	GossipMembers int `json:"gossipMembers,omitempty"`
	GossipAlive   int `json:"gossipAlive,omitempty"`
	// StrictDrops counts packets strict encryption dropped.
	StrictDrops uint64 `json:"strictDrops,omitempty"`
	// Problems are the agent's current problems, as on its status page.
	Problems []string `json:"problems,omitempty"`
}

// TunnelPeer is one WireGuard peer of a node.
type TunnelPeer struct {
	Cluster ClusterName `json:"cluster"`
	Node    string      `json:"node"`
	// LastHandshake is zero before the first handshake.
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
}

// DecodeNodeStatus parses and validates a node status owned by owner.
func DecodeNodeStatus(owner *ClusterConfig, key string, value []byte) (NodeStatus, error) {
	name, ok := strings.CutPrefix(key, NodeStatusPrefix(owner.Name))
	if !ok || name == "" || strings.Contains(name, "/") {
		return NodeStatus{}, invalid(key, "", "not a node status key of cluster %q", owner.Name)
	}
	var s NodeStatus
	if err := decodeStrict(value, &s); err != nil {
		return NodeStatus{}, invalid(key, "", "%v", err)
	}
	if s.Cluster != owner.Name {
		return NodeStatus{}, invalid(key, "", "node status names cluster %q, key names %q", s.Cluster, owner.Name)
	}
	if s.Node != name {
		return NodeStatus{}, invalid(key, "", "node status names node %q, key names %q", s.Node, name)
	}
	if err := validName("node name", s.Node, 253); err != nil {
		return NodeStatus{}, invalid(key, "", "%v", err)
	}
	if len(s.Peers) > MaxNodeStatusPeers {
		return NodeStatus{}, invalid(key, "", "%d peers, at most %d", len(s.Peers), MaxNodeStatusPeers)
	}
	for i, p := range s.Peers {
		if err := p.Cluster.Validate(); err != nil {
			return NodeStatus{}, invalid(key, "", "peer %d: %v", i, err)
		}
		if err := validName("peer node name", p.Node, 253); err != nil {
			return NodeStatus{}, invalid(key, "", "peer %d: %v", i, err)
		}
		if p.RxBytes < 0 || p.TxBytes < 0 {
			return NodeStatus{}, invalid(key, "", "peer %d: negative byte count", i)
		}
	}
	if s.GossipMembers < 0 || s.GossipAlive < 0 || s.GossipAlive > s.GossipMembers {
		return NodeStatus{}, invalid(key, "", "gossip: %d of %d alive", s.GossipAlive, s.GossipMembers)
	}
	if len(s.Problems) > MaxNodeStatusProblems {
		return NodeStatus{}, invalid(key, "", "%d problems, at most %d", len(s.Problems), MaxNodeStatusProblems)
	}
	for _, p := range s.Problems {
		if len(p) > maxProblemLen {
			return NodeStatus{}, invalid(key, "", "problem text longer than %d bytes", maxProblemLen)
		}
	}
	return s, nil
}

// String names the peer as cluster/node.
func (p TunnelPeer) String() string { return fmt.Sprintf("%s/%s", p.Cluster, p.Node) }
