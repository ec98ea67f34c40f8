// Package remote mirrors the state other clusters publish in the kvstore.
//
// A Watcher follows the cluster configs under clustermesh.ClustersPrefix.
// For every cluster but its own it watches that cluster's sync markers and,
// once a kind's marker is seen, lists then watches that kind. A remote
// cluster is synced once every kind's list completed after its marker was
// seen, so a synced cluster's state is complete as it was first published.
// Services come in two layouts (clustermesh.KindServices, one value each;
// clustermesh.KindServicesV2, a header and chunks); a cluster needs the
// marker of one of them. A service is shown from its chunked layout once
// its header and every chunk the header names are there and valid, from
// its single value otherwise; while chunks are still arriving the service
// keeps what consumers saw, so a mesh migrating between layouts never
// shows a service losing backends. Changes and Snapshots carry services
// as KindServices whatever layout they came from.
//
// Every entry is decoded strictly against its owner's config
// (clustermesh.Decode*). Rejected entries are counted and never applied.
//
// Losing continuity (reconnect after compaction) does not flush: known
// entries are marked stale, re-listed, and only those really gone are
// deleted, so consumers keep serving. A value rewritten unchanged produces
// no change event. When a cluster config disappears (the cluster left or its
// lease expired) the cluster is drained: a delete for each of its entries,
// then a ClusterGone change; its status stays visible, marked gone.
//
// Consumers read immutable Snapshots (cheap to take; shared, never
// modified). A level-based consumer registers a wake-up with Notify (such
// as a reconcile.Loop's Trigger) and reads Snapshot when woken; a consumer
// that needs each edge may Subscribe to Changes. Subscriptions are buffered
// without bound, so a slow consumer never stalls the Watcher; it only grows
// its own queue. Entries streams the raw entries the Watcher accepted, in
// the order it applied them, for a relay (package relay) to mirror; it is
// queued without bound too. Run blocks until its context is done and waits for every goroutine
// it started.
package remote
