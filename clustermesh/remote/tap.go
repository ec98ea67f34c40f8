package remote

import (
	"context"
	"sync"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
)

// tap queues the validated entry stream for one Entries consumer without
// bound, so the Watcher never waits on it.
type tap struct {
	out chan kvstore.Event

	mu     sync.Mutex
	queue  []kvstore.Event
	signal chan struct{}
}

// Entries returns the stream of store entries the Watcher accepted, as
// kvstore events, from now on until ctx is done (then the channel is
// closed). Call it before Run to see the whole mesh. It is what a relay
// mirrors: replaying the stream into an empty store (each cluster's keys
// bound to one lease of that cluster) gives a store from which another
// Watcher sees what this one sees. In order:
//
//   - EventUpsert of a cluster's clustermesh.GrantKey, then of its
//     clustermesh.ClusterKey, with the raw values the Watcher validated,
//     when it starts watching the cluster and whenever either value
//     changes (grant first: a consumer of the replayed store that saw the
//     config alone would take the cluster for one without a grant);
//   - EventUpsert of each entry of the cluster that decoded against its
//     config (rejected ones never appear), EventDelete of each entry that
//     went away, including those a re-list after a lost watch no longer
//     found (nothing is flushed);
//   - EventUpsert of a kind's sync marker (clustermesh.SyncedKey) once
//     that kind's list is complete and its entries delivered, again after
//     each re-list, and when the marker changes later;
//   - EventListDone with the cluster's ClusterKey as Key once the list of
//     its sync markers is complete (and after each re-list), Value the
//     comma-separated kinds that have one: a kind not among them is not
//     published now, and its entries from an earlier stream are stale;
//     EventDelete of a sync marker that went away;
//   - EventDelete of the cluster's ClusterKey when the Watcher stops
//     watching it (it left, lost its grant or changed ID or CIDRs): every
//     entry of the cluster is gone with it; no separate deletes follow;
//   - EventListDone with an empty Key each time the cluster configs and
//     grants are both fully listed: a cluster whose ClusterKey was not announced
//     since the stream started is not part of the mesh.
//
// Events of one cluster's kind come in the order they were applied; a
// cluster's keys come after its ClusterKey upsert and before its
// ClusterKey delete. Values are shared with the Watcher: do not modify
// them.
func (w *Watcher) Entries(ctx context.Context) <-chan kvstore.Event {
	t := &tap{out: make(chan kvstore.Event, 64), signal: make(chan struct{}, 1)}
	w.subsMu.Lock()
	w.taps[t] = struct{}{}
	w.subsMu.Unlock()
	go func() {
		defer close(t.out)
		defer func() {
			w.subsMu.Lock()
			delete(w.taps, t)
			w.subsMu.Unlock()
		}()
		for {
			t.mu.Lock()
			batch := t.queue
			t.queue = nil
			t.mu.Unlock()
			for _, ev := range batch {
				select {
				case t.out <- ev:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-t.signal:
			case <-ctx.Done():
				return
			}
		}
	}()
	return t.out
}

// tapping reports whether anyone consumes Entries, so that the Watcher
// keeps raw values only then.
func (w *Watcher) tapping() bool {
	w.subsMu.Lock()
	defer w.subsMu.Unlock()
	return len(w.taps) > 0
}

// emitEntry queues ev for every Entries consumer.
func (w *Watcher) emitEntry(ev kvstore.Event) {
	w.subsMu.Lock()
	defer w.subsMu.Unlock()
	for t := range w.taps {
		t.mu.Lock()
		t.queue = append(t.queue, ev)
		t.mu.Unlock()
		select {
		case t.signal <- struct{}{}:
		default:
		}
	}
}

// tapMeta is what Entries last announced of a cluster: its raw config
// and grant.
type tapMeta struct{ config, grant string }

// announce emits the raw grant and config of cluster name, if Entries has
// consumers and either changed since last announced. Only Run's goroutine
// calls it.
func (w *Watcher) announce(m *meshState, name clustermesh.ClusterName) {
	if !w.tapping() {
		return
	}
	cur := tapMeta{config: m.rawConfigs[name], grant: m.rawGrants[name]}
	if w.tapped[name] == cur {
		return
	}
	w.tapped[name] = cur
	w.emitEntry(kvstore.Event{Kind: kvstore.EventUpsert, Key: clustermesh.GrantKey(name), Value: []byte(cur.grant)})
	w.emitEntry(kvstore.Event{Kind: kvstore.EventUpsert, Key: clustermesh.ClusterKey(name), Value: []byte(cur.config)})
}
