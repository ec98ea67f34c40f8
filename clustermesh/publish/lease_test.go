package publish_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/internal/testenv"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/memory"
)

// ownedByLease lists every key cluster owns, by the lease it is bound to.
func ownedByLease(ctx context.Context, s kvstore.Store, cluster clustermesh.ClusterName) (map[kvstore.LeaseID][]kvstore.KeyValue, error) {
	out := map[kvstore.LeaseID][]kvstore.KeyValue{}
	for _, prefix := range append(clustermesh.OwnedPrefixes(cluster), clustermesh.ClusterKey(cluster)) {
		kvs, _, err := s.List(ctx, prefix)
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			out[kv.Lease] = append(out[kv.Lease], kv)
		}
	}
	return out, nil
}

// spread checks that cluster's keys are all bound to leases, at most max a
// lease, and returns them by lease.
func spread(ctx context.Context, s kvstore.Store, cluster clustermesh.ClusterName, max, keys int) (map[kvstore.LeaseID][]kvstore.KeyValue, error) {
	by, err := ownedByLease(ctx, s, cluster)
	if err != nil {
		return nil, err
	}
	n := 0
	for id, kvs := range by {
		if id == 0 {
			return nil, fmt.Errorf("%d keys bound to no lease", len(kvs))
		}
		if len(kvs) > max {
			return nil, fmt.Errorf("lease %x holds %d keys, more than %d", id, len(kvs), max)
		}
		n += len(kvs)
	}
	if n != keys {
		return nil, fmt.Errorf("%d keys, want %d", n, keys)
	}
	if want := (keys + max - 1) / max; len(by) != want {
		return nil, fmt.Errorf("%d keys on %d leases, want %d (full leases)", keys, len(by), want)
	}
	return by, nil
}

// TestKeysAreSpreadAndALostLeaseRepublishesOnlyItsKeys: a cluster's keys
// are bound to several leases of at most KeysPerLease keys; when one of
// them is lost, the session ends, and the new one adopts the leases still
// alive and writes back only the lost lease's keys: no other key is
// deleted or rewritten.
func TestKeysAreSpreadAndALostLeaseRepublishesOnlyItsKeys(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.1.0.0/16")
	const perLease = 4
	p, _ := publish.New(publish.Config{Cluster: east, LeaseTTL: 5 * time.Second, KeysPerLease: perLease}, store, nil, nil)
	_ = p.Replace(clustermesh.KindNodes, nodes(east, 10, "z1"))
	stop := start(t, ctx, p)
	defer stop()
	testenv.Eventually(t, 5*time.Second, synced(p, clustermesh.KindNodes))

	const keys = 12 // config, 10 nodes, marker
	var by map[kvstore.LeaseID][]kvstore.KeyValue
	testenv.Eventually(t, 5*time.Second, func() (err error) {
		by, err = spread(ctx, store, "east", perLease, keys)
		return err
	})

	// Lose the lease of node keys that does not hold the config.
	config, err := store.Get(ctx, clustermesh.ClusterKey("east"))
	if err != nil {
		t.Fatal(err)
	}
	var lost kvstore.LeaseID
	for id := range by {
		if id != config.Lease {
			lost = id
			break
		}
	}
	lostKeys := map[string]bool{}
	for _, kv := range by[lost] {
		lostKeys[kv.Key] = true
	}
	before := map[string]kvstore.KeyValue{}
	for _, kvs := range by {
		for _, kv := range kvs {
			before[kv.Key] = kv
		}
	}
	failures := p.Status().Failures

	rec := record(ctx, t, store)
	if err := store.RevokeLease(ctx, lost); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := spread(ctx, store, "east", perLease, keys)
		return err
	})
	if p.Status().Failures == failures {
		t.Error("the lost lease did not end the session (no failed round recorded)")
	}
	// Everything but the lost keys is as it was; they are back.
	after, err := ownedByLease(ctx, store, "east")
	if err != nil {
		t.Fatal(err)
	}
	for id, kvs := range after {
		for _, kv := range kvs {
			old := before[kv.Key]
			switch {
			case lostKeys[kv.Key] && id == lost:
				t.Errorf("%s: still on the lost lease %x", kv.Key, lost)
			case !lostKeys[kv.Key] && (kv.ModRevision != old.ModRevision || id != old.Lease):
				t.Errorf("%s: rewritten (lease %x revision %d, was %x %d) although its lease lived", kv.Key, id, kv.ModRevision, old.Lease, old.ModRevision)
			}
		}
	}
	evs := rec.settle(t, p, east)
	var deleted, put []string
	for _, ev := range evs {
		switch ev.Kind {
		case kvstore.EventDelete:
			deleted = append(deleted, ev.Key)
			if !lostKeys[ev.Key] {
				t.Errorf("spurious delete of %s: its lease was not lost", ev.Key)
			}
		case kvstore.EventUpsert:
			put = append(put, ev.Key)
			if !lostKeys[ev.Key] {
				t.Errorf("%s rewritten: its lease was not lost", ev.Key)
			}
		}
	}
	sort.Strings(deleted)
	sort.Strings(put)
	if len(deleted) != len(lostKeys) || strings.Join(deleted, ",") != strings.Join(put, ",") {
		t.Errorf("after losing lease %x (keys %v): deleted %v, written %v; want the lost keys deleted by etcd and written again", lost, lostKeys, deleted, put)
	}
}

// TestRestartMovesKeysOffAnOverfullLease: keys a publisher bound to one
// lease (as before KeysPerLease existed) are moved onto bounded leases by
// the next one, without a delete, and the old lease is revoked once empty.
func TestRestartMovesKeysOffAnOverfullLease(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	defer store.Close()
	east := cluster("east", 1, "10.1.0.0/16")
	p1, _ := publish.New(publish.Config{Cluster: east, LeaseTTL: 5 * time.Second, KeysPerLease: 1000}, store, nil, nil)
	_ = p1.Replace(clustermesh.KindNodes, nodes(east, 10, "z1"))
	stop := start(t, ctx, p1)
	testenv.Eventually(t, 5*time.Second, synced(p1, clustermesh.KindNodes))
	stop()
	by, err := ownedByLease(ctx, store, "east")
	if err != nil {
		t.Fatal(err)
	}
	if len(by) != 1 {
		t.Fatalf("one-lease publisher used leases %v", by)
	}
	var old kvstore.LeaseID
	for old = range by {
	}

	rec := record(ctx, t, store)
	const perLease = 4
	p2, _ := publish.New(publish.Config{Cluster: east, LeaseTTL: 5 * time.Second, KeysPerLease: perLease}, store, nil, nil)
	_ = p2.Replace(clustermesh.KindNodes, nodes(east, 10, "z1"))
	stop = start(t, ctx, p2)
	defer stop()
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, err := spread(ctx, store, "east", perLease, 12); err != nil {
			return err
		}
		if _, err := store.LeaseTTL(ctx, old); err == nil {
			return fmt.Errorf("old lease %x not revoked", old)
		}
		return nil
	})
	for _, ev := range rec.settle(t, p2, east) {
		if ev.Kind == kvstore.EventDelete {
			t.Errorf("spurious delete of %s while moving it to a bounded lease", ev.Key)
		}
	}
}
