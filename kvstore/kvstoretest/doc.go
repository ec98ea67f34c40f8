// Package kvstoretest is the conformance suite every kvstore.Store backend
// passes, so that kvstore/etcd and kvstore/memory cannot drift apart.
//
// A backend's test calls Run with a function that builds a fresh Harness for
// each subtest:
//
//	func TestStore(t *testing.T) {
//		kvstoretest.Run(t, func(t *testing.T) kvstoretest.Harness {
//			s := memory.New()
//			return kvstoretest.Harness{Store: s, Compact: func(_ context.Context, rev int64) error { return s.Compact(rev) }}
//		})
//	}
//
// The subtests cover every method and promise of kvstore.Store: reads and
// writes, revisions, prefix isolation, leases (expiry, renewal, revocation),
// compare-and-swap races, and Watch (initial list, ordered changes, no
// repeats or gaps over many writes, lease expiry as deletes, compaction
// recovery, resumption after a server restart or a partition when the
// harness can cause one, slow consumers, cancellation, Close, goroutine
// leaks). Most subtests run in parallel; each uses its own Harness and key
// prefix. Waits use deadlines, never fixed sleeps, so the suite is as fast
// as the backend.
package kvstoretest
