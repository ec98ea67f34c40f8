package relay

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
)

// Batching of the mirror's writes: one transaction carries at most
// maxBatchOps operations (etcd's default --max-txn-ops is 128) and about
// maxBatchBytes of values (its request limit is 1.5 MiB).
const (
	maxBatchOps   = 128
	maxBatchBytes = 512 << 10
)

// mirror applies the upstream entry stream to the relay's etcd. Only run's
// goroutine touches its fields but leases, which keepAlive reads too.
type mirror struct {
	r    *Relay
	cli  *clientv3.Client
	seed maphash.Seed

	// have is the hash of every key's value in the mirror; underKind
	// indexes its keys by kind prefix (KindPrefix(kind, cluster)), so a
	// prune reads only the keys it is about, and unindexed holds the keys
	// of no kind prefix (configs, grants, markers, or keys of the schema's
	// shape that it does not parse, from an older relay).
	have      map[string]uint64
	underKind map[string]map[string]struct{}
	unindexed map[string]struct{}
	// seen holds the keys the upstream stream confirmed since start;
	// announced the clusters it announced; pruned the (cluster, kind)
	// pairs whose leftovers from before the start were deleted.
	seen      map[string]struct{}
	announced map[clustermesh.ClusterName]bool
	pruned    map[clustermesh.ClusterName]map[clustermesh.Kind]bool

	mu     sync.Mutex
	leases map[clustermesh.ClusterName]clientv3.LeaseID

	// The pending transaction.
	ops           []clientv3.Op
	opKeys        map[string]struct{}
	opBytes       int
	puts, deletes int
	listed        bool
}

// newMirror reads what the mirror holds from a previous run: every key's
// value hash and each cluster's lease (the one its config key is bound
// to). Nothing is deleted until the upstream says it is gone.
func newMirror(ctx context.Context, cli *clientv3.Client, r *Relay) (*mirror, error) {
	m := &mirror{
		r:         r,
		cli:       cli,
		seed:      maphash.MakeSeed(),
		have:      map[string]uint64{},
		underKind: map[string]map[string]struct{}{},
		unindexed: map[string]struct{}{},
		seen:      map[string]struct{}{},
		announced: map[clustermesh.ClusterName]bool{},
		pruned:    map[clustermesh.ClusterName]map[clustermesh.Kind]bool{},
		leases:    map[clustermesh.ClusterName]clientv3.LeaseID{},
		opKeys:    map[string]struct{}{},
	}
	store := etcd.NewFromClient(cli)
	defer store.Close()
	kvs, _, err := store.List(ctx, clustermesh.Root)
	if err != nil {
		return nil, fmt.Errorf("read mirror: %w", err)
	}
	for _, kv := range kvs {
		m.hold(kv.Key, maphash.Bytes(m.seed, kv.Value))
		if pk, err := clustermesh.ParseKey(kv.Key); err == nil && pk.Config && kv.Lease != 0 {
			m.leases[pk.Cluster] = clientv3.LeaseID(kv.Lease)
		}
	}
	m.report()
	return m, nil
}

// run applies entries until the channel closes or a write fails.
func (m *mirror) run(ctx context.Context, entries <-chan kvstore.Event) error {
	for {
		var ev kvstore.Event
		var ok bool
		select {
		case ev, ok = <-entries:
		default:
			// Nothing queued: commit what is pending before waiting.
			if err := m.flush(ctx); err != nil {
				return err
			}
			select {
			case ev, ok = <-entries:
			case <-ctx.Done():
				return nil
			}
		}
		if !ok {
			return m.flush(ctx)
		}
		if err := m.apply(ctx, ev); err != nil {
			return err
		}
	}
}

func (m *mirror) apply(ctx context.Context, ev kvstore.Event) error {
	switch ev.Kind {
	case kvstore.EventUpsert:
		return m.upsert(ctx, ev.Key, ev.Value)
	case kvstore.EventDelete:
		pk, err := clustermesh.ParseKey(ev.Key)
		if err != nil {
			return nil // the Watcher emits only keys of the schema
		}
		if pk.Config {
			return m.removeCluster(ctx, pk.Cluster)
		}
		return m.delete(ctx, ev.Key)
	case kvstore.EventListDone:
		if ev.Key == "" {
			return m.meshListed(ctx)
		}
		pk, err := clustermesh.ParseKey(ev.Key)
		if err != nil || !pk.Config {
			return nil
		}
		return m.markersListed(ctx, pk.Cluster, string(ev.Value))
	}
	return nil
}

// markersListed removes what the mirror holds of cluster's kinds that have
// no sync marker upstream any more (a publisher that stopped writing a
// service layout while the relay was down): nothing will re-list them.
func (m *mirror) markersListed(ctx context.Context, cluster clustermesh.ClusterName, kinds string) error {
	published := map[clustermesh.Kind]bool{}
	for _, k := range strings.Split(kinds, ",") {
		published[clustermesh.Kind(k)] = true
	}
	for _, kind := range clustermesh.Kinds {
		if published[kind] || m.pruned[cluster][kind] {
			continue
		}
		if err := m.delete(ctx, clustermesh.SyncedKey(cluster, kind)); err != nil {
			return err
		}
		if err := m.prune(ctx, cluster, kind); err != nil {
			return err
		}
	}
	return nil
}

// upsert writes key unless the mirror holds the same value, bound to its
// cluster's lease. A sync marker first removes the kind's keys left from
// before the start that the upstream no longer has.
func (m *mirror) upsert(ctx context.Context, key string, value []byte) error {
	pk, err := clustermesh.ParseKey(key)
	if err != nil {
		return nil
	}
	if pk.Config {
		m.announced[pk.Cluster] = true
	}
	lease, err := m.lease(ctx, pk.Cluster)
	if err != nil {
		return err
	}
	if pk.Synced && !m.pruned[pk.Cluster][clustermesh.Kind(pk.Name)] {
		if err := m.prune(ctx, pk.Cluster, clustermesh.Kind(pk.Name)); err != nil {
			return err
		}
	}
	m.seen[key] = struct{}{}
	h := maphash.Bytes(m.seed, value)
	if old, ok := m.have[key]; ok && old == h {
		return nil
	}
	if err := m.queue(ctx, clientv3.OpPut(key, string(value), clientv3.WithLease(lease)), key, len(value)); err != nil {
		return err
	}
	m.hold(key, h)
	m.puts++
	return nil
}

// prune deletes the keys of cluster's kind that the mirror held at start
// and the upstream did not deliver again by the kind's sync marker.
func (m *mirror) prune(ctx context.Context, cluster clustermesh.ClusterName, kind clustermesh.Kind) error {
	if m.pruned[cluster] == nil {
		m.pruned[cluster] = map[clustermesh.Kind]bool{}
	}
	m.pruned[cluster][kind] = true
	m.r.mu.Lock()
	if m.r.status.Relisted == nil {
		m.r.status.Relisted = map[clustermesh.ClusterName]int{}
	}
	m.r.status.Relisted[cluster]++
	m.r.mu.Unlock()
	prefix := clustermesh.KindPrefix(kind, cluster)
	var gone []string
	for key := range m.underKind[prefix] {
		if _, ok := m.seen[key]; !ok {
			gone = append(gone, key)
		}
	}
	for key := range m.unindexed {
		if _, ok := m.seen[key]; !ok && strings.HasPrefix(key, prefix) {
			gone = append(gone, key)
		}
	}
	for _, key := range gone {
		if err := m.delete(ctx, key); err != nil {
			return err
		}
	}
	return nil
}

// delete removes key from the mirror if it holds it.
func (m *mirror) delete(ctx context.Context, key string) error {
	if _, ok := m.have[key]; !ok {
		return nil
	}
	if err := m.queue(ctx, clientv3.OpDelete(key), key, 0); err != nil {
		return err
	}
	m.drop(key)
	delete(m.seen, key)
	m.deletes++
	return nil
}

// kindPrefixOf returns the kind prefix key is under, if it is a key of a
// kind (not a config, grant or marker).
func kindPrefixOf(key string) (string, bool) {
	pk, err := clustermesh.ParseKey(key)
	if err != nil || pk.Kind == "" {
		return "", false
	}
	prefix := clustermesh.KindPrefix(pk.Kind, pk.Cluster)
	return prefix, strings.HasPrefix(key, prefix)
}

// hold records that the mirror holds key with a value of hash h.
func (m *mirror) hold(key string, h uint64) {
	if _, had := m.have[key]; !had {
		if prefix, ok := kindPrefixOf(key); ok {
			if m.underKind[prefix] == nil {
				m.underKind[prefix] = map[string]struct{}{}
			}
			m.underKind[prefix][key] = struct{}{}
		} else {
			m.unindexed[key] = struct{}{}
		}
	}
	m.have[key] = h
}

// drop records that the mirror no longer holds key.
func (m *mirror) drop(key string) {
	if _, had := m.have[key]; !had {
		return
	}
	delete(m.have, key)
	if prefix, ok := kindPrefixOf(key); ok {
		delete(m.underKind[prefix], key)
		if len(m.underKind[prefix]) == 0 {
			delete(m.underKind, prefix)
		}
	} else {
		delete(m.unindexed, key)
	}
}

// queue adds op on key to the pending transaction, committing that first
// when it is full or already touches key (etcd refuses a transaction
// that writes one key twice).
func (m *mirror) queue(ctx context.Context, op clientv3.Op, key string, size int) error {
	if _, dup := m.opKeys[key]; dup || len(m.ops) >= maxBatchOps || m.opBytes+size > maxBatchBytes {
		if err := m.flush(ctx); err != nil {
			return err
		}
	}
	m.ops = append(m.ops, op)
	m.opKeys[key] = struct{}{}
	m.opBytes += size + len(key)
	return nil
}

// flush commits the pending writes in one transaction.
func (m *mirror) flush(ctx context.Context) error {
	if len(m.ops) == 0 {
		return nil
	}
	if _, err := m.cli.Txn(ctx).Then(m.ops...).Commit(); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("write mirror: a cluster's relay lease expired (the relay stalled past its TTL): %w; restart the relay to mirror afresh", err)
		}
		return fmt.Errorf("write mirror: %w", err)
	}
	m.r.metrics.txns.Inc()
	m.r.metrics.writes.WithLabelValues("put").Add(float64(m.puts))
	m.r.metrics.writes.WithLabelValues("delete").Add(float64(m.deletes))
	m.ops, m.opBytes, m.puts, m.deletes = m.ops[:0], 0, 0, 0
	clear(m.opKeys)
	m.report()
	return nil
}

// lease returns cluster's relay-local lease, granting one if it has none.
func (m *mirror) lease(ctx context.Context, cluster clustermesh.ClusterName) (clientv3.LeaseID, error) {
	m.mu.Lock()
	id, ok := m.leases[cluster]
	m.mu.Unlock()
	if ok {
		return id, nil
	}
	resp, err := m.cli.Grant(ctx, int64(m.r.cfg.LeaseTTL.Seconds()))
	if err != nil {
		return 0, fmt.Errorf("grant mirror lease for cluster %s: %w", cluster, err)
	}
	m.mu.Lock()
	m.leases[cluster] = resp.ID
	m.mu.Unlock()
	return resp.ID, nil
}

// removeCluster revokes cluster's lease: every key of it vanishes from the
// mirror at once, and consumers drain it as they would from the broker.
func (m *mirror) removeCluster(ctx context.Context, cluster clustermesh.ClusterName) error {
	if err := m.flush(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	id, ok := m.leases[cluster]
	delete(m.leases, cluster)
	m.mu.Unlock()
	if ok {
		if _, err := m.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("revoke mirror lease of cluster %s: %w", cluster, err)
		}
		m.r.metrics.writes.WithLabelValues("revoke").Inc()
	}
	// Keys of the cluster not bound to its lease (none are written so,
	// but a mirror from an older relay may hold some) go one by one.
	var rest []string
	for prefix, keys := range m.underKind {
		if strings.HasSuffix(prefix, "/"+string(cluster)+"/") { // KindPrefix(any kind, cluster)
			for key := range keys {
				rest = append(rest, key)
			}
		}
	}
	for key := range m.unindexed {
		if pk, err := clustermesh.ParseKey(key); err == nil && pk.Cluster == cluster {
			rest = append(rest, key)
		}
	}
	for _, key := range rest {
		m.drop(key)
		delete(m.seen, key)
	}
	if ok {
		// The revocation took them; check that nothing is left anyway.
		rest = rest[:0]
		for _, prefix := range append(clustermesh.OwnedPrefixes(cluster), clustermesh.ClusterKey(cluster), clustermesh.GrantKey(cluster)) {
			opts := []clientv3.OpOption{clientv3.WithKeysOnly()}
			if strings.HasSuffix(prefix, "/") {
				opts = append(opts, clientv3.WithPrefix())
			}
			resp, err := m.cli.Get(ctx, prefix, opts...)
			if err != nil {
				return fmt.Errorf("read mirror after removing cluster %s: %w", cluster, err)
			}
			for _, kv := range resp.Kvs {
				rest = append(rest, string(kv.Key))
			}
		}
	}
	for _, key := range rest {
		if _, err := m.cli.Delete(ctx, key); err != nil {
			return fmt.Errorf("remove cluster %s from mirror: %w", cluster, err)
		}
	}
	delete(m.announced, cluster)
	delete(m.pruned, cluster)
	m.r.mu.Lock()
	delete(m.r.status.Relisted, cluster)
	m.r.mu.Unlock()
	m.r.log.Info("cluster left the mesh; removed from the mirror", "cluster", cluster)
	m.report()
	return nil
}

// meshListed removes the clusters the mirror holds from before the start
// that the upstream, now fully listed, did not announce.
func (m *mirror) meshListed(ctx context.Context) error {
	if err := m.flush(ctx); err != nil {
		return err
	}
	stale := map[clustermesh.ClusterName]bool{}
	for key := range m.have {
		if pk, err := clustermesh.ParseKey(key); err == nil && !m.announced[pk.Cluster] {
			stale[pk.Cluster] = true
		}
	}
	m.mu.Lock()
	for c := range m.leases {
		if !m.announced[c] {
			stale[c] = true
		}
	}
	m.mu.Unlock()
	for c := range stale {
		if err := m.removeCluster(ctx, c); err != nil {
			return err
		}
	}
	m.listed = true
	m.report()
	return nil
}

// keepAlive renews every cluster's lease each third of its TTL.
func (m *mirror) keepAlive(ctx context.Context) error {
	t := time.NewTicker(m.r.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		m.mu.Lock()
		ids := make(map[clustermesh.ClusterName]clientv3.LeaseID, len(m.leases))
		for c, id := range m.leases {
			ids[c] = id
		}
		m.mu.Unlock()
		for c, id := range ids {
			_, err := m.cli.KeepAliveOnce(ctx, id)
			switch {
			case err == nil:
			case errors.Is(err, rpctypes.ErrLeaseNotFound):
				m.mu.Lock()
				current := m.leases[c] == id
				m.mu.Unlock()
				if current {
					return fmt.Errorf("mirror lease of cluster %s expired: its keys are gone; restart the relay to mirror afresh", c)
				}
			case ctx.Err() != nil:
				return nil
			default:
				m.r.log.Warn("renew mirror lease failing", "cluster", c, "err", err)
			}
		}
	}
}

// report publishes the mirror's size.
func (m *mirror) report() {
	m.mu.Lock()
	clusters := len(m.leases)
	m.mu.Unlock()
	m.r.metrics.keys.Set(float64(len(m.have)))
	m.r.metrics.clusters.Set(float64(clusters))
	m.r.mu.Lock()
	m.r.status.Clusters, m.r.status.Keys, m.r.status.MeshListed = clusters, len(m.have), m.listed
	m.r.mu.Unlock()
}
