package agent

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/policy"
	"github.com/braidmesh/braid/clustermesh/remote"
)

// restoreHold is a restarted agent's promise to leave the maps it found
// pinned as they are until it knows the whole mesh again: the programs
// kept enforcing them while no agent ran, and a desired state computed
// from a partial view (an empty first snapshot, a cluster not listed yet,
// its identities missing from the policy) would prune entries still in
// force, a window of wrong verdicts and broken services.
type restoreHold struct {
	deadline time.Time // when the agent gives up waiting
	released bool
	// waiting says what the agent waits for, for the status page; empty
	// once released.
	waiting string
}

// holdRestored starts a hold when the pinned ipcache holds entries: the
// node ran an agent before. A fresh node has nothing to keep.
func (a *Agent) holdRestored(objs *bpf.Objects) error {
	have, err := objs.IPCache.Dump()
	if err != nil {
		return fmt.Errorf("read the pinned ipcache: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// The address blocks' identities the maps hold: the first compile
	// keeps them, so the policy trie and ipcache need no renumbering.
	a.restoredBlocks = nil
	for k, v := range have {
		id := clustermesh.NumericIdentity(v.Identity)
		if v.Flags == 0 && id >= policy.FirstBlockIdentity && id <= policy.LastBlockIdentity {
			a.restoredBlocks = append(a.restoredBlocks, policy.Block{Prefix: k.Prefix(), Identity: id})
		}
	}
	a.restore = nil
	if len(have) > 0 {
		a.restore = &restoreHold{deadline: time.Now().Add(a.cfg.RestoreTimeout), waiting: "restarted with pinned maps: keeping them until the mesh is listed"}
		a.log.Info("restarted with pinned maps: keeping them until every cluster is synced", "entries", len(have), "timeout", a.cfg.RestoreTimeout)
	}
	return nil
}

// restoring reports whether a hold is in force.
func (a *Agent) restoring() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.restore != nil && !a.restore.released
}

// holdsRestored reports whether the mesh loop must leave the datapath
// alone for snap: a hold is in force and the mesh is not known in full
// (meshMissing), nor has the hold timed out. A released hold stays released.
func (a *Agent) holdsRestored(snap *remote.Snapshot, now time.Time) bool {
	a.mu.Lock()
	h := a.restore
	a.mu.Unlock()
	if h == nil || h.released {
		return false
	}
	b := a.watcher.Broker()
	missing := meshMissing(snap, b.ConfigsListed && b.GrantsListed, a.cfg.Cluster)
	policies := a.cfg.Policies == nil
	if !policies {
		_, policies = a.cfg.Policies.NetworkPolicies()
	}
	if !policies {
		missing = append(missing, "the cluster's NetworkPolicies")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case len(missing) == 0:
		h.released, h.waiting = true, ""
		a.log.Info("the whole mesh is known: reconciling the pinned maps")
		return false
	case now.After(h.deadline):
		h.released, h.waiting = true, ""
		a.log.Warn("restarted with pinned maps: reconciling them without the whole mesh", "missing", strings.Join(missing, ", "), "timeout", a.cfg.RestoreTimeout)
		return false
	}
	h.waiting = "restarted with pinned maps: keeping them as they are until the agent knows " + strings.Join(missing, ", ")
	return true
}

// meshMissing lists what snap lacks for a complete view of the mesh: the
// list of cluster configs and grants (listed), the local cluster, and
// every cluster's initial sync. Empty means complete.
func meshMissing(snap *remote.Snapshot, listed bool, local clustermesh.ClusterName) []string {
	if !listed {
		return []string{"the mesh's clusters"}
	}
	var missing []string
	if _, ok := snap.Clusters[local]; !ok {
		missing = append(missing, "cluster "+string(local))
	}
	for name, cs := range snap.Clusters {
		if !cs.Synced {
			missing = append(missing, "cluster "+string(name))
		}
	}
	slices.Sort(missing)
	return missing
}
