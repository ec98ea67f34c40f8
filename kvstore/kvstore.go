package kvstore

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Backends translate their own errors into these at the
// boundary so callers can branch with errors.Is.
var (
	// ErrNotFound is returned by Get when the key does not exist.
	ErrNotFound = errors.New("key not found")
	// ErrLeaseNotFound is returned by KeepAlive, Revoke and lease-bound
	// writes when the lease expired or was revoked.
	ErrLeaseNotFound = errors.New("lease not found")
	// ErrPermissionDenied is returned when the store refuses an operation
	// for the credentials in use (etcd authorization).
	ErrPermissionDenied = errors.New("permission denied")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("store closed")
)

// LeaseID names a lease. The zero value means "no lease".
type LeaseID int64

// KeyValue is one stored entry.
type KeyValue struct {
	Key            string
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	// Lease is the lease the key is bound to, zero if none.
	Lease LeaseID
}

// EventKind says what an Event reports.
type EventKind int

const (
	// EventUpsert: Key was created or modified; Value is the new value.
	EventUpsert EventKind = iota + 1
	// EventDelete: Key was deleted (or its lease expired).
	EventDelete
	// EventListDone: the initial list, or a re-list after EventRestart, is
	// complete. Every key that exists at Revision has been delivered as an
	// EventUpsert since the last EventRestart (or since the watch started).
	EventListDone
	// EventRestart: the watch lost continuity (for example the revision it
	// resumes from was compacted). A full re-list follows as EventUpserts and
	// an EventListDone. Consumers should mark the keys they hold stale and
	// delete the ones not seen again by EventListDone, rather than flushing.
	EventRestart
	// EventError reports a failure the watch is retrying after (connection
	// lost, permission denied, ...). Err is set. The watch continues.
	EventError
	// EventProgress: the server confirmed the watch is live and nothing
	// under the prefix changed up to Revision. Backends that can tell send
	// it now and then (etcd: its progress notifications); a consumer that
	// has seen one and then none for a while knows the watch is stale even
	// though no error was reported. Consumers that do not care ignore it.
	EventProgress
)

func (k EventKind) String() string {
	switch k {
	case EventUpsert:
		return "upsert"
	case EventDelete:
		return "delete"
	case EventListDone:
		return "list-done"
	case EventRestart:
		return "restart"
	case EventError:
		return "error"
	case EventProgress:
		return "progress"
	}
	return "unknown"
}

// Event is one item of a Watch stream.
type Event struct {
	Kind     EventKind
	Key      string // EventUpsert, EventDelete
	Value    []byte // EventUpsert
	Revision int64  // store revision of the change, or of the list for EventListDone
	Err      error  // EventError
}

// Store is a key-value store with leases and prefix watches. It is
// implemented by kvstore/etcd (a real etcd cluster) and kvstore/memory (an
// in-process store for tests and single-process demos). All methods are safe
// for concurrent use.
type Store interface {
	// Get returns the entry at key, or ErrNotFound.
	Get(ctx context.Context, key string) (KeyValue, error)
	// List returns every entry whose key starts with prefix, sorted by key,
	// and the store revision the list was read at.
	List(ctx context.Context, prefix string) ([]KeyValue, int64, error)
	// Put writes key. If lease is not zero the key is bound to it and is
	// deleted when the lease expires or is revoked; ErrLeaseNotFound if the
	// lease does not exist.
	Put(ctx context.Context, key string, value []byte, lease LeaseID) error
	// CreateIfAbsent writes key only if it does not exist (compare-and-swap on
	// the key's create revision). It reports whether it wrote the key.
	CreateIfAbsent(ctx context.Context, key string, value []byte, lease LeaseID) (bool, error)
	// Delete removes key. Deleting an absent key succeeds.
	Delete(ctx context.Context, key string) error

	// GrantLease creates a lease that expires after ttl without KeepAlive.
	GrantLease(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive renews the lease: on success it has at least half its TTL
	// left (the memory store renews it for its full TTL; etcd's keeps
	// renewing it over one stream until a TTL after the last call).
	// ErrLeaseNotFound if it already expired.
	KeepAlive(ctx context.Context, id LeaseID) error
	// LeaseTTL returns how long the lease has left unless it is renewed;
	// ErrLeaseNotFound if it expired or was revoked. Consumers read it for
	// another cluster's lease to show how long its entries stay. etcd
	// counts in whole seconds.
	LeaseTTL(ctx context.Context, id LeaseID) (time.Duration, error)
	// RevokeLease ends the lease now, deleting every key bound to it.
	// Revoking an unknown lease returns ErrLeaseNotFound.
	RevokeLease(ctx context.Context, id LeaseID) error

	// Watch lists prefix and then follows it: the channel first carries an
	// EventUpsert for every existing key and an EventListDone, then every
	// change in revision order. It resumes by itself after a lost connection
	// without repeating or skipping events, and recovers from compaction with
	// EventRestart and a re-list. The channel is closed once ctx is done.
	// A consumer that stops reading stalls only its own watch.
	Watch(ctx context.Context, prefix string) <-chan Event

	// Close releases the store's connections. Watches end; later calls
	// return ErrClosed. Close is idempotent.
	Close() error
}
