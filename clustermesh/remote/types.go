package remote

import (
	"net/netip"
	"time"

	"github.com/braidmesh/braid/clustermesh"
)

// ClusterState is one remote cluster's state in a Snapshot. It is never
// modified after it is built.
type ClusterState struct {
	Config clustermesh.ClusterConfig
	// Synced says every kind was fully listed after its sync marker.
	Synced     bool
	Nodes      map[string]clustermesh.Node                          // by node name
	Identities map[clustermesh.NumericIdentity]clustermesh.Identity // by ID
	IPs        map[netip.Prefix]clustermesh.IPEntry                 // by prefix
	Services   map[string]clustermesh.Service                       // by "namespace/name"
}

// Snapshot is the mesh as the Watcher sees it: every remote cluster it
// knows. It is immutable and may be shared.
type Snapshot struct {
	Clusters map[clustermesh.ClusterName]*ClusterState
}

// ChangeType says what a Change reports.
type ChangeType int

// Change types.
const (
	// Upsert: Record (a clustermesh.Node, Identity, IPEntry or Service value)
	// was added or changed.
	Upsert ChangeType = iota + 1
	// Delete: the entry at Key is gone; Record is its last value.
	Delete
	// ClusterSynced: Cluster became synced.
	ClusterSynced
	// ClusterGone: Cluster left the mesh and was drained.
	ClusterGone
)

func (t ChangeType) String() string {
	switch t {
	case Upsert:
		return "upsert"
	case Delete:
		return "delete"
	case ClusterSynced:
		return "cluster-synced"
	case ClusterGone:
		return "cluster-gone"
	}
	return "unknown"
}

// Change is one event for consumers.
type Change struct {
	Type    ChangeType
	Cluster clustermesh.ClusterName
	Kind    clustermesh.Kind // Upsert, Delete
	Key     string           // Upsert, Delete
	Record  any              // Upsert, Delete
	// Time is when the Watcher applied the change.
	Time time.Time
}
