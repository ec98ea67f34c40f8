// Package etcd implements kvstore.Store over an etcd v3 cluster
// (go.etcd.io/etcd/client/v3).
//
// New connects and checks, within Config.DialTimeout, that the cluster
// answers; when it does not, New probes each endpoint and says why
// ("connection refused at ADDRESS", "x509: certificate signed by unknown
// authority", each with a hint), which ExplainDial does for other clients of
// etcd. NewFromClient wraps a client the caller keeps owning. A Store
// holds one client, and so one gRPC connection, for all its calls and
// watches: every Watch shares the client's single watch stream, so one
// process can follow a thousand prefixes (250 clusters x 4 kinds) at the
// cost of a goroutine each. Client exposes the client for administration
// (users, roles, compaction) that kvstore.Store does not cover.
//
// Reads are linearizable. List and the list phase of Watch read a prefix in
// pages of 10,000 keys at one revision, so even very large prefixes take few
// round trips. CreateIfAbsent is a transaction on the key's create revision.
// Lease TTLs are whole seconds (rounded up) and at least the server's
// minimum; expiry is detected by the server, up to ~0.5 s late. KeepAlive
// starts, per lease, a keeper that renews it over the client's one
// long-lived lease stream (clientv3 Lease.KeepAlive), so renewals cost no
// new stream and no new authentication; a call returns once the lease was
// renewed within the last half of its TTL, and the keeper stops a TTL
// after the last call.
//
// Watch is list-then-watch: the list's revision + 1 is where the etcd watch
// starts. The client resumes after a lost connection by itself; when the
// server ends a watch (no leader, permission denied, ...) the watch reports
// kvstore.EventError and resumes after a backoff from the last delivered
// revision + 1, dropping any repeats; when that revision has been compacted
// it reports kvstore.EventRestart, lists again and reports
// kvstore.EventListDone. Watches require a leader (clientv3.WithRequireLeader)
// so that a member cut off from its cluster cannot leave them silently stale.
// A consumer that stops reading stalls only its own watch: the client buffers
// its responses.
//
// Errors are translated at the boundary: etcd's authentication and
// authorization errors wrap kvstore.ErrPermissionDenied, a missing lease
// wraps kvstore.ErrLeaseNotFound, and both keep the etcd error in the chain.
// Other errors callers may test with errors.Is: kvstore.ErrNotFound,
// kvstore.ErrClosed, and the context's errors. All methods are safe for
// concurrent use; calls block until etcd answers or ctx is done. Close ends
// every watch and lease keeper, waits for their goroutines and closes the
// client if New made it; it is idempotent.
package etcd
