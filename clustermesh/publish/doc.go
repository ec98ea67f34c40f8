// Package publish writes one cluster's state into the kvstore.
//
// A Publisher owns exactly the keys under its cluster's prefixes
// (clustermesh.OwnedPrefixes) and its cluster config key, and refuses records
// whose keys lie elsewhere. Every key it writes is bound to the cluster's
// lease, which Run keeps alive; if the process dies, its entries expire with
// the lease.
//
// Callers hand it desired state (Replace for a whole kind, Upsert/Delete for
// single records); these calls only record intent and wake Run, which does
// all I/O. Run reconciles levels, not edges: it writes only keys whose value
// changed, deletes owned keys no longer desired (only for kinds whose full
// desired set was given with Replace), and writes a per-kind sync marker
// after the first full publish of that kind.
//
// On restart the Publisher lists what it owns and adopts the live lease its
// keys are bound to, so unchanged keys are not rewritten and no consumer sees
// a spurious delete. If the lease was lost (expired during a partition), a
// new one is granted and every key is rewritten.
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
