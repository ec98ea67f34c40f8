package remote

import (
	"net/netip"

	"github.com/braidmesh/braid/clustermesh"
)

// table holds one kind of a cluster's records by key. Records are stored by
// value, not boxed, so a large mesh costs one map slot per entry.
type table interface {
	// put stores rec (of the table's record type) unless the stored value
	// has the same hash; it clears the key's stale mark either way and
	// reports whether anything changed.
	put(key string, hash uint64, rec any) bool
	// remove deletes key and returns its last record.
	remove(key string) (any, bool)
	markStale()
	staleKeys() []string
	keys() []string
	len() int
}

type slot[T any] struct {
	hash uint64
	rec  T
}

// typedTable compares records by the hash of the value they were decoded
// from.
type typedTable[T any] struct {
	m     map[string]slot[T]
	stale map[string]struct{} // only during a re-list
}

func newTable[T any]() *typedTable[T] { return &typedTable[T]{m: make(map[string]slot[T])} }

func (t *typedTable[T]) put(key string, hash uint64, rec any) bool {
	delete(t.stale, key)
	if s, ok := t.m[key]; ok && s.hash == hash {
		return false
	}
	t.m[key] = slot[T]{hash: hash, rec: rec.(T)}
	return true
}

func (t *typedTable[T]) remove(key string) (any, bool) {
	s, ok := t.m[key]
	if !ok {
		return nil, false
	}
	delete(t.m, key)
	delete(t.stale, key)
	return s.rec, true
}

func (t *typedTable[T]) markStale() { t.stale = markAll(t.m) }

func (t *typedTable[T]) staleKeys() []string {
	out := keysOf(t.stale)
	t.stale = nil
	return out
}

func (t *typedTable[T]) keys() []string { return keysOf(t.m) }

func (t *typedTable[T]) len() int { return len(t.m) }

// each calls f for every record.
func (t *typedTable[T]) each(f func(T)) {
	for _, s := range t.m {
		f(s.rec)
	}
}

// ipSlot is an IP entry without what every entry of a cluster shares (the
// cluster name): a cold start holds hundreds of thousands of them.
type ipSlot struct {
	prefix   netip.Prefix
	hostIP   netip.Addr
	identity clustermesh.NumericIdentity
}

// ipTable holds a cluster's IP entries compactly, compared by value.
type ipTable struct {
	cluster clustermesh.ClusterName
	m       map[string]ipSlot
	stale   map[string]struct{}
}

func newIPTable(cluster clustermesh.ClusterName) *ipTable {
	return &ipTable{cluster: cluster, m: make(map[string]ipSlot)}
}

func (t *ipTable) entry(s ipSlot) clustermesh.IPEntry {
	return clustermesh.IPEntry{Prefix: s.prefix, Cluster: t.cluster, Identity: s.identity, HostIP: s.hostIP}
}

func (t *ipTable) put(key string, _ uint64, rec any) bool {
	delete(t.stale, key)
	e := rec.(clustermesh.IPEntry)
	s := ipSlot{prefix: e.Prefix, hostIP: e.HostIP, identity: e.Identity}
	if old, ok := t.m[key]; ok && old == s {
		return false
	}
	t.m[key] = s
	return true
}

func (t *ipTable) remove(key string) (any, bool) {
	s, ok := t.m[key]
	if !ok {
		return nil, false
	}
	delete(t.m, key)
	delete(t.stale, key)
	return t.entry(s), true
}

func (t *ipTable) markStale() { t.stale = markAll(t.m) }

func (t *ipTable) staleKeys() []string {
	out := keysOf(t.stale)
	t.stale = nil
	return out
}

func (t *ipTable) keys() []string { return keysOf(t.m) }

func (t *ipTable) len() int { return len(t.m) }

func (t *ipTable) each(f func(clustermesh.IPEntry)) {
	for _, s := range t.m {
		f(t.entry(s))
	}
}

func markAll[V any](m map[string]V) map[string]struct{} {
	out := make(map[string]struct{}, len(m))
	for k := range m {
		out[k] = struct{}{}
	}
	return out
}

func keysOf[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
