// Package memory is an in-process kvstore.Store for tests and single-process
// demos.
//
// A Store behaves like a one-member etcd: every write that changes something
// advances one global int64 revision (a lease revocation that deletes several
// keys uses a single revision), entries carry create and modification
// revisions, and leases expire on real timers after their TTL unless renewed
// by KeepAlive. Deleting an absent key succeeds and does not advance the
// revision.
//
// Watch registers the watcher and lists the prefix under one lock, so no
// change can fall between the list and the first event. Each watch has its own
// unbounded queue filled by writers without blocking and drained by one
// goroutine: a consumer that stops reading stalls only its own watch (and
// grows its own queue), never a writer or another watch.
//
// Compact is a test hook modelling etcd's history compaction: a watch whose
// queue still holds changes older than the compaction revision loses them and
// gets kvstore.EventRestart, a full re-list and kvstore.EventListDone instead.
//
// All methods are safe for concurrent use and none blocks on a watch
// consumer. After Close every method returns kvstore.ErrClosed, every watch
// channel is closed, and Watch returns an already closed channel. Errors
// callers may test with errors.Is: kvstore.ErrNotFound,
// kvstore.ErrLeaseNotFound, kvstore.ErrClosed, and the context's error when
// ctx is done before the call starts.
package memory
