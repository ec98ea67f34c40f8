// Package reconcile runs level-based reconcile loops: the one place where
// Braid's controllers wait for work, retry with backoff and report how
// their rounds went.
//
// A Loop calls its Func on Run's start, after a Trigger, every
// Config.Resync, and after a failed round when its backoff (exponential
// with jitter, from cenkalti/backoff) expires. The Func computes the full
// desired state, reads the actual state and applies the difference; it must
// be safe to rerun, so triggers only wake the loop and carry no data:
// Trigger coalesces (a pending trigger absorbs the next ones) and never
// blocks, so it may be called from watch callbacks and informer handlers.
// A trigger that arrives during a round makes exactly one more round.
//
// Each Loop (and each controller that runs its own queue, such as a
// client-go workqueue, through a Tracker) keeps a Status (last success,
// last error, consecutive failures) and exports Prometheus metrics whose
// only label is the loop's name, a fixed string per controller:
//
//	braid_reconcile_duration_seconds{loop}           histogram of rounds
//	braid_reconcile_failures_total{loop}             failed rounds
//	braid_reconcile_consecutive_failures{loop}       failures since the last success
//	braid_reconcile_last_success_timestamp_seconds{loop}
//
// Backoff and Wait are exported for the rare retry that is not a reconcile
// round (resuming a watch stream), so no other package hand-writes one.
//
// The package imports nothing from Braid; any layer may use it. Trigger,
// Status and Tracker's methods are safe for concurrent use; Run must be
// called once.
package reconcile
