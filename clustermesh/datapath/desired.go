package datapath

import (
	"net/netip"

	"github.com/braidmesh/braid/clustermesh"
)

// Topology is where this node sits; backends are tiered against it.
type Topology struct {
	Node      string
	Zone      string
	Region    string
	Cluster   clustermesh.ClusterName
	ClusterID clustermesh.ClusterID
	// NodeIPs are this node's addresses: an IP entry whose HostIP is one of
	// them is local and is not steered to the tunnel.
	NodeIPs []netip.Addr
	// TunnelIfindex is the tunnel device remote pods are reached through;
	// 0 disables steering.
	TunnelIfindex uint32
}

// Frontend is one address a service answers on.
type Frontend struct {
	Addr     netip.AddrPort
	Protocol clustermesh.Protocol
}

// Backend is one endpoint of a Service.
type Backend struct {
	Addr    netip.AddrPort
	Cluster clustermesh.ClusterName
	Node    string
	Zone    string
	// Region is the region of the backend's node; it places a backend of
	// another cluster in the region tier.
	Region string
	// Healthy says the endpoint is ready (or serving and not terminating).
	Healthy bool
	// NodeUnreachable says liveness (gossip) found the backend's node
	// dead. Such a backend is used only when no backend of its service is
	// both Healthy and reachable.
	NodeUnreachable bool
}

// usable says b may receive new connections: ready on a live node.
func (b Backend) usable() bool { return b.Healthy && !b.NodeUnreachable }

// Service is a set of frontends sharing one set of backends (one service
// port, typically one per address family).
type Service struct {
	// Name is for logs only, e.g. "east/default/web:http".
	Name      string
	Frontends []Frontend
	Affinity  clustermesh.Affinity
	// Topology is the service's preference for close backends.
	Topology clustermesh.Topology
	Backends []Backend
}

// LocalEntry is an address hosted on this node (a local pod).
type LocalEntry struct {
	Prefix   netip.Prefix
	Identity clustermesh.NumericIdentity
}

// Desired is the complete state the maps must hold. It is a level: anything
// in the maps that Desired does not mention is removed.
type Desired struct {
	// IPCache are mesh entries (remote and local cluster).
	IPCache []clustermesh.IPEntry
	// Local are this node's own pods; they win over IPCache on conflict.
	Local []LocalEntry
	// ClusterIDs gives the numeric ID of each cluster named in IPCache and
	// backends; unknown clusters get ID 0.
	ClusterIDs map[clustermesh.ClusterName]clustermesh.ClusterID
	// Prefixes are identities of address blocks (policy ipBlocks); the
	// longest prefix wins, and pods' own entries win over them.
	Prefixes []LocalEntry
	Services []Service
	// Policy and Isolated are the compiled NetworkPolicies
	// (clustermesh/policy): Isolated identities drop, in that direction,
	// what no rule of Policy allows.
	Policy   []clustermesh.PolicyRule
	Isolated []clustermesh.PolicyIsolation
	// DefaultDeny isolates every local pod for ingress.
	DefaultDeny bool
	// PolicyRevision names the policy set Policy, Isolated and Prefixes
	// were compiled from (opaque); Status reports it once they are in
	// the maps.
	PolicyRevision string
	// KeepPolicy leaves the policy map and the address-block entries of
	// the ipcache as they are (Policy, Isolated and Prefixes are
	// ignored): the policies are not known yet, and a restarted agent
	// keeps enforcing what it enforced.
	KeepPolicy bool
}
