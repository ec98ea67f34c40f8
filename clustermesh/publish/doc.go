// Package publish writes one cluster's state into the kvstore.
//
// A Publisher owns exactly the keys under its cluster's prefixes
// (clustermesh.OwnedPrefixes) and its cluster config key, and refuses records
// whose keys lie elsewhere. Every key it writes is bound to one of the
// session's leases, which Run keeps alive; if the process dies, its entries
// expire with them.
//
// A session holds a set of leases, all granted with Config.LeaseTTL and
// renewed together on the store's one lease stream, with at most
// Config.KeysPerLease keys each: etcd checks, per Put bound to a lease, the
// writer's permission on every key already on it, so one lease for all of a
// cluster's keys makes publishing quadratic. A key is bound to the first
// lease with room and keeps it across updates; a lease is granted when all
// are full. Losing any lease of the set ends the session. "The cluster's
// lease" that consumers show (remote, status) is the lease of its config
// key, which is renewed with all the others.
//
// Callers hand it desired state (Replace for a whole kind, Upsert/Delete for
// single records); these calls only record intent and wake Run, which does
// all I/O. Run reconciles levels, not edges: it writes only keys whose value
// changed, deletes owned keys no longer desired (only for kinds whose full
// desired set was given with Replace), and writes a per-kind sync marker
// after the first full publish of that kind.
//
// On restart (and after a lost lease) the Publisher lists what it owns and
// adopts the leases its keys are bound to if all of them are alive, so
// unchanged keys are not rewritten and no consumer sees a spurious delete;
// keys of a lost lease are already gone and are written again. If one of
// the set is gone, or a lease holds more than KeysPerLease keys (written by
// an older publisher), the live ones are only kept alive until their keys
// have been rewritten onto new leases, then revoked.
//
// Run is a reconcile.Loop named "publish": failed sessions and writes are
// retried with backoff and jitter, and the loop's status (LoopStatus) and
// metrics (braid_reconcile_*{loop="publish"}) say how rounds went.
//
// Services are written in the layouts Config.ServiceLayout names: one
// value per service (clustermesh.KindServices), a header and chunks of at
// most clustermesh.MaxChunkBackends backends (clustermesh.KindServicesV2),
// or both while a mesh migrates. Backends stay in their chunk, so a
// one-backend change rewrites one chunk. A pass writes chunks first, then
// headers and every other value, then deletes, so no header names a chunk
// not yet written. Only the markers of the layouts written are kept.
//
// All methods are safe for concurrent use. Register and Run block on the
// store; Replace, Upsert and Delete never block.
package publish
