package clustermesh

import "time"

// RemoteClusterStatus is how well a consumer is synced with one remote
// cluster. It is produced by clustermesh/remote and shown by the status
// page and `braid status`.
type RemoteClusterStatus struct {
	Name ClusterName `json:"name"`
	ID   ClusterID   `json:"id"`
	// Connected is false while the cluster's watches are failing.
	Connected bool `json:"connected"`
	// Synced says every kind was fully listed after its sync marker.
	Synced      bool          `json:"synced"`
	SyncedKinds map[Kind]bool `json:"syncedKinds"`
	Entries     map[Kind]int  `json:"entries"`
	// LastUpdate is when an entry last changed; its age is the sync age.
	LastUpdate time.Time `json:"lastUpdate,omitzero"`
	// LastProgress is when the store last confirmed the cluster's watches
	// are live (an etcd progress notification); zero if it never did.
	LastProgress time.Time `json:"lastProgress,omitzero"`
	// Stale says the watches confirmed progress before but neither did
	// again nor delivered a change for longer than the consumer's bound,
	// though no error was reported: what is shown may be out of date.
	Stale    bool `json:"stale,omitempty"`
	Failures int  `json:"failures"`
	// Invalid counts entries rejected by validation.
	Invalid   int    `json:"invalid"`
	LastError string `json:"lastError,omitempty"`
	// Rejected holds the reasons of the most recent rejections (at most
	// MaxRejectedShown), newest last: entries outside the cluster's grant,
	// and claims of its config that differ from the grant.
	Rejected []string `json:"rejected,omitempty"`
	// Ungranted says why the cluster is ignored: it has no grant from the
	// broker, or its grant conflicts with an older one.
	Ungranted string `json:"ungranted,omitempty"`
	// LeaseRemaining is how many seconds the cluster's lease (the one its
	// config key is bound to; the publisher renews all of its leases
	// together) has left unless its operator renews it, as last read from the broker and
	// counted down since; the cluster leaves (its entries vanish
	// everywhere) when it runs out. Nil unless the consumer reads leases
	// (remote.Config.LeaseCheckInterval: operators do) and has read this
	// cluster's.
	LeaseRemaining *float64 `json:"leaseRemainingSeconds,omitempty"`
	// Gone marks a cluster that left the mesh (its config disappeared);
	// it has been drained.
	Gone   bool      `json:"gone,omitempty"`
	GoneAt time.Time `json:"goneAt,omitzero"`
}

// LastHeard is the later of LastProgress and LastUpdate: when the cluster's
// watches last showed they were live. A stale cluster's age counts from it.
func (r *RemoteClusterStatus) LastHeard() time.Time {
	if r.LastUpdate.After(r.LastProgress) {
		return r.LastUpdate
	}
	return r.LastProgress
}

// PublishStatus is the progress of one cluster's publisher.
type PublishStatus struct {
	Registered bool          `json:"registered"`
	Synced     map[Kind]bool `json:"synced"`
	Entries    map[Kind]int  `json:"entries"`
	LastWrite  time.Time     `json:"lastWrite,omitzero"`
	Failures   int           `json:"failures"`
	// LastError is the error of the last failed call to the store; it is
	// cleared by the next success. FailingSince is when the failures began
	// (zero while the store answers).
	LastError    string    `json:"lastError,omitempty"`
	FailingSince time.Time `json:"failingSince,omitzero"`
	// Removed says the broker no longer accepts the cluster's credentials:
	// the cluster was removed from the mesh and stopped publishing.
	Removed bool `json:"removed,omitempty"`
}

// MaxRejectedShown bounds RemoteClusterStatus.Rejected.
const MaxRejectedShown = 16
