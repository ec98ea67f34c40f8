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
	Failures   int       `json:"failures"`
	// Invalid counts entries rejected by validation.
	Invalid   int    `json:"invalid"`
	LastError string `json:"lastError,omitempty"`
	// Gone marks a cluster that left the mesh (its config disappeared);
	// it has been drained.
	Gone   bool      `json:"gone,omitempty"`
	GoneAt time.Time `json:"goneAt,omitzero"`
}

// PublishStatus is the progress of one cluster's publisher.
type PublishStatus struct {
	Registered bool          `json:"registered"`
	Synced     map[Kind]bool `json:"synced"`
	Entries    map[Kind]int  `json:"entries"`
	LastWrite  time.Time     `json:"lastWrite,omitzero"`
	Failures   int           `json:"failures"`
	LastError  string        `json:"lastError,omitempty"`
}
