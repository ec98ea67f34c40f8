// Package kvstore defines the key-value store Braid's clusters meet in.
//
// Store is the contract; kvstore/etcd implements it over a real etcd cluster
// and kvstore/memory in process. kvstore/kvstoretest holds the one
// conformance suite both backends pass, so their behaviour cannot drift.
//
// Keys are plain strings; values are opaque bytes. Leases bind keys to the
// life of a writer: when the writer stops renewing, its keys go away. Watch
// is list-then-watch: a consumer gets the full state, a marker that the list
// is complete, and then every change, across reconnects and compactions.
//
// Errors callers may test with errors.Is: ErrNotFound, ErrLeaseNotFound,
// ErrPermissionDenied, ErrClosed.
package kvstore
