package k8s

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
)

// IdentityStore is the part of kvstore.Store the identity allocator uses.
type IdentityStore interface {
	List(ctx context.Context, prefix string) ([]kvstore.KeyValue, int64, error)
	Get(ctx context.Context, key string) (kvstore.KeyValue, error)
	CreateIfAbsent(ctx context.Context, key string, value []byte, lease kvstore.LeaseID) (bool, error)
}

// allocator maps label sets to numeric identities in the cluster's range.
// It is owned by the Source's loop goroutine.
type allocator struct {
	cfg   *clustermesh.ClusterConfig
	store IdentityStore
	log   *slog.Logger

	byLabels map[string]clustermesh.NumericIdentity // canonical label set -> ID
	byID     map[clustermesh.NumericIdentity]map[string]string
	next     clustermesh.NumericIdentity // where the search for a free ID starts
}

func newAllocator(cfg *clustermesh.ClusterConfig, store IdentityStore, log *slog.Logger) *allocator {
	first, _ := cfg.IdentityRange()
	return &allocator{
		cfg:      cfg,
		store:    store,
		log:      log,
		byLabels: make(map[string]clustermesh.NumericIdentity),
		byID:     make(map[clustermesh.NumericIdentity]map[string]string),
		next:     first,
	}
}

// canonical is a label set's map key: sorted k=v pairs. Label keys and
// values cannot contain NUL.
func canonical(labels map[string]string) string {
	keys := slices.Sorted(maps.Keys(labels))
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
		b.WriteByte(0)
	}
	return b.String()
}

// recover adopts the identities the cluster already published, so a label
// set keeps its ID across restarts. Invalid entries are skipped.
func (a *allocator) recover(ctx context.Context) error {
	kvs, _, err := a.store.List(ctx, clustermesh.KindPrefix(clustermesh.KindIdentities, a.cfg.Name))
	if err != nil {
		return fmt.Errorf("recover identities of cluster %s: %w", a.cfg.Name, err)
	}
	for _, kv := range kvs {
		id, err := clustermesh.DecodeIdentity(a.cfg, kv.Key, kv.Value)
		if err != nil {
			a.log.Warn("ignoring invalid published identity", "err", err)
			continue
		}
		c := canonical(id.Labels)
		if prev, ok := a.byLabels[c]; ok && prev < id.ID {
			continue // a duplicate: keep the lower ID; the other is freed
		}
		a.byLabels[c] = id.ID
		a.byID[id.ID] = id.Labels
		if id.ID >= a.next {
			a.next = id.ID + 1
		}
	}
	_, last := a.cfg.IdentityRange()
	if a.next > last {
		a.next, _ = a.cfg.IdentityRange()
	}
	return nil
}

// errIdentitiesExhausted is returned when every ID in the range is taken.
var errIdentitiesExhausted = errors.New("identity range exhausted")

// allocate returns the ID of labels, allocating one with compare-and-swap
// on its identity key if the set is new. The value written is exactly what
// the Publisher writes later, so consumers see no change when it does.
func (a *allocator) allocate(ctx context.Context, labels map[string]string) (clustermesh.NumericIdentity, error) {
	c := canonical(labels)
	if id, ok := a.byLabels[c]; ok {
		return id, nil
	}
	first, last := a.cfg.IdentityRange()
	for range int(last - first + 1) {
		id := a.next
		a.next++
		if a.next > last {
			a.next = first
		}
		if _, used := a.byID[id]; used {
			continue
		}
		rec := clustermesh.Identity{ID: id, Cluster: a.cfg.Name, Labels: labels}
		val, err := json.Marshal(&rec)
		if err != nil {
			return 0, fmt.Errorf("allocate identity: encode: %w", err)
		}
		ok, err := a.store.CreateIfAbsent(ctx, rec.Key(), val, 0)
		if err != nil {
			return 0, fmt.Errorf("allocate identity %d: %w", id, err)
		}
		if !ok {
			// Taken: by another replica for the same labels (adopt it), or a
			// freed identity not yet withdrawn (skip it).
			kv, err := a.store.Get(ctx, rec.Key())
			if err != nil && !errors.Is(err, kvstore.ErrNotFound) {
				return 0, fmt.Errorf("allocate identity %d: read existing: %w", id, err)
			}
			if err == nil {
				if got, derr := clustermesh.DecodeIdentity(a.cfg, kv.Key, kv.Value); derr != nil || canonical(got.Labels) != c {
					continue
				}
			} else {
				continue
			}
		}
		a.byLabels[c] = id
		a.byID[id] = labels
		return id, nil
	}
	return 0, fmt.Errorf("allocate identity in cluster %s: %w", a.cfg.Name, errIdentitiesExhausted)
}

// retain frees every identity whose label set is not in used.
func (a *allocator) retain(used map[string]bool) {
	for c, id := range a.byLabels {
		if !used[c] {
			delete(a.byLabels, c)
			delete(a.byID, id)
		}
	}
}

// records returns every allocated identity, sorted by ID.
func (a *allocator) records() []*clustermesh.Identity {
	out := make([]*clustermesh.Identity, 0, len(a.byID))
	for _, id := range slices.Sorted(maps.Keys(a.byID)) {
		out = append(out, &clustermesh.Identity{ID: id, Cluster: a.cfg.Name, Labels: a.byID[id]})
	}
	return out
}
