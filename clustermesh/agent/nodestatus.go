package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
)

// DefaultNodeStatusInterval is how often an agent publishes its node's
// status: the broker's page shows tunnels and gossip health from it. The
// key is bound to a lease of three intervals, so a dead agent's status
// disappears.
const DefaultNodeStatusInterval = 10 * time.Second

// nodeStatusMinInterval keeps the node status's writes at least this far
// apart when changes trigger them.
const nodeStatusMinInterval = time.Second

// nodeStatus is what the agent publishes about its node now.
func (a *Agent) nodeStatus() clustermesh.NodeStatus {
	snap := a.Snapshot()
	// Synced only once the mesh's clusters were listed: before that no
	// remote is known, which is not "every remote synced".
	b := a.watcher.Broker()
	s := clustermesh.NodeStatus{Cluster: a.cfg.Cluster, Node: a.cfg.Node, Time: snap.Time, Synced: b.ConfigsListed && b.GrantsListed}
	for _, r := range snap.Remotes {
		if !r.Gone && !r.Synced {
			s.Synced = false
		}
	}
	for _, p := range snap.Problems {
		if len(s.Problems) == clustermesh.MaxNodeStatusProblems {
			break
		}
		if len(p) > 500 {
			p = p[:500]
		}
		s.Problems = append(s.Problems, p)
	}
	a.mu.Lock()
	dev := a.dev
	a.mu.Unlock()
	if dev != nil {
		if st, err := dev.Stats(); err == nil {
			for _, p := range st.Peers {
				cluster, node, ok := strings.Cut(p.Name, "/")
				if !ok || len(s.Peers) == clustermesh.MaxNodeStatusPeers {
					continue
				}
				s.Peers = append(s.Peers, clustermesh.TunnelPeer{Cluster: clustermesh.ClusterName(cluster), Node: node,
					LastHandshake: p.LastHandshake, RxBytes: p.RxBytes, TxBytes: p.TxBytes})
			}
			s.StrictDrops = st.StrictDrops
		}
	}
	return s
}

// nodeStatusPublisher publishes the node's status under its cluster's
// nodestatus prefix, bound to its own lease of three intervals. It is the
// func of the agent's "node_status" reconcile loop: a resync round (every
// interval) writes the status afresh, refreshing tunnel counters and the
// lease; a triggered round (the mesh loop applied a change) writes only
// when the status says something new (synced, or its problems), so that
// braid join and the page learn at once that an agent synced, without the
// counters of every tunnel costing a write per change. Failed rounds are
// retried with the loop's backoff and shown among the loop problems.
type nodeStatusPublisher struct {
	a     *Agent
	store kvstore.Store
	key   string
	ttl   time.Duration

	// Owned by the loop's rounds.
	lease kvstore.LeaseID
	last  *clustermesh.NodeStatus // last written
}

func (a *Agent) newNodeStatusPublisher(store kvstore.Store, interval time.Duration) *nodeStatusPublisher {
	return &nodeStatusPublisher{a: a, store: store, key: clustermesh.NodeStatusKey(a.cfg.Cluster, a.cfg.Node), ttl: 3 * interval}
}

// round is the loop's func.
func (p *nodeStatusPublisher) round(ctx context.Context, resync bool) error {
	s := p.a.nodeStatus()
	if !resync && p.last != nil && p.last.Synced == s.Synced && slices.Equal(p.last.Problems, s.Problems) {
		return nil
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("publish node status: %w", err)
	}
	if p.lease != 0 {
		if err := p.store.KeepAlive(ctx, p.lease); err != nil {
			p.lease = 0 // expired or unreachable: the next write takes a new one
		}
	}
	if p.lease == 0 {
		if p.lease, err = p.store.GrantLease(ctx, p.ttl); err != nil {
			return fmt.Errorf("publish node status: grant lease: %w", err)
		}
	}
	if err := p.store.Put(ctx, p.key, b, p.lease); err != nil {
		return fmt.Errorf("publish node status %s: %w", p.key, err)
	}
	p.last = &s
	return nil
}

// withdraw revokes the lease, so that the status vanishes at once when the
// agent stops. The loop must have returned.
func (p *nodeStatusPublisher) withdraw(ctx context.Context) {
	if p.lease == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = p.store.RevokeLease(rctx, p.lease)
	p.lease = 0
}
