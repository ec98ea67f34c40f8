package agent

import (
	"context"
	"encoding/json"
	"fmt"
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

// publishNodeStatus writes the node's status under its cluster's
// nodestatus prefix every interval, bound to its own lease, until ctx is
// done; then it revokes the lease so the status vanishes at once. Failures
// are retried at the next interval and shown as a problem.
func (a *Agent) publishNodeStatus(ctx context.Context, store kvstore.Store, interval time.Duration) {
	key := clustermesh.NodeStatusKey(a.cfg.Cluster, a.cfg.Node)
	var lease kvstore.LeaseID
	defer func() {
		if lease != 0 {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = store.RevokeLease(rctx, lease)
		}
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := a.writeNodeStatus(ctx, store, key, &lease, 3*interval)
		a.setProblem("node status", err)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (a *Agent) writeNodeStatus(ctx context.Context, store kvstore.Store, key string, lease *kvstore.LeaseID, ttl time.Duration) error {
	b, err := json.Marshal(a.nodeStatus())
	if err != nil {
		return fmt.Errorf("publish node status: %w", err)
	}
	if *lease != 0 {
		if err := store.KeepAlive(ctx, *lease); err != nil {
			*lease = 0
		}
	}
	if *lease == 0 {
		if *lease, err = store.GrantLease(ctx, ttl); err != nil {
			return fmt.Errorf("publish node status: grant lease: %w", err)
		}
	}
	if err := store.Put(ctx, key, b, *lease); err != nil {
		return fmt.Errorf("publish node status %s: %w", key, err)
	}
	return nil
}
