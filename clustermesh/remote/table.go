package remote

import (
	"encoding/binary"
	"net/netip"

	"github.com/braidmesh/braid/clustermesh"
)

// table holds one kind of a cluster's records by key. Records are stored by
// value, not boxed, so a large mesh costs one map slot per entry.
type table interface {
	// put stores rec (of the table's record type) unless the stored value
	// is the same; it clears the key's stale mark either way and reports
	// whether anything changed.
	put(key string, hash uint64, rec any) bool
	// remove deletes key and returns its last record.
	remove(key string) (any, bool)
	// reserve makes room for n records in an empty table, so a cold
	// sync's list does not grow the map step by step.
	reserve(n int)
	markStale()
	staleKeys() []string
	keys() []string
	len() int
}

// typedTable stores records of type R as slots of type S: pack builds a
// slot from a record and the hash of the value it was decoded from, unpack
// gives the record back, and same says whether two slots hold the same
// value.
type typedTable[R, S any] struct {
	m      map[string]S
	stale  map[string]struct{} // only during a re-list
	pack   func(R, uint64) S
	unpack func(S) R
	same   func(a, b S) bool
}

// hashed is the slot of records compared by the hash of their value.
type hashed[R any] struct {
	hash uint64
	rec  R
}

// newTable stores records as they are, compared by value hash.
func newTable[R any]() *typedTable[R, hashed[R]] {
	return &typedTable[R, hashed[R]]{
		m:      make(map[string]hashed[R]),
		pack:   func(r R, h uint64) hashed[R] { return hashed[R]{h, r} },
		unpack: func(s hashed[R]) R { return s.rec },
		same:   func(a, b hashed[R]) bool { return a.hash == b.hash },
	}
}

// ipSlot is an IP entry without what every entry of a cluster shares (the
// cluster name): a cold start holds hundreds of thousands of them. Named
// ports, which policies resolve, are packed into a string (packPorts):
// empty for the many pods that name none.
type ipSlot struct {
	prefix   netip.Prefix
	hostIP   netip.Addr
	identity clustermesh.NumericIdentity
	ports    string
}

// packPorts encodes named ports as, per port, the name and the protocol
// each preceded by its length (uvarint), then the port (uvarint).
func packPorts(ps []clustermesh.NamedPort) string {
	if len(ps) == 0 {
		return ""
	}
	b := make([]byte, 0, len(ps)*12)
	for _, p := range ps {
		b = binary.AppendUvarint(b, uint64(len(p.Name)))
		b = append(b, p.Name...)
		b = binary.AppendUvarint(b, uint64(len(p.Protocol)))
		b = append(b, p.Protocol...)
		b = binary.AppendUvarint(b, uint64(p.Port))
	}
	return string(b)
}

// unpackPorts decodes what packPorts encoded.
func unpackPorts(s string) []clustermesh.NamedPort {
	if s == "" {
		return nil
	}
	b := []byte(s)
	var out []clustermesh.NamedPort
	field := func() string {
		n, k := binary.Uvarint(b)
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s
	}
	for len(b) > 0 {
		name := field()
		proto := field()
		port, k := binary.Uvarint(b)
		b = b[k:]
		out = append(out, clustermesh.NamedPort{Name: name, Protocol: clustermesh.Protocol(proto), Port: uint16(port)})
	}
	return out
}

// newIPTable stores a cluster's IP entries compactly, compared by value.
func newIPTable(cluster clustermesh.ClusterName) *typedTable[clustermesh.IPEntry, ipSlot] {
	return &typedTable[clustermesh.IPEntry, ipSlot]{
		m: make(map[string]ipSlot),
		pack: func(e clustermesh.IPEntry, _ uint64) ipSlot {
			return ipSlot{prefix: e.Prefix, hostIP: e.HostIP, identity: e.Identity, ports: packPorts(e.NamedPorts)}
		},
		unpack: func(s ipSlot) clustermesh.IPEntry {
			return clustermesh.IPEntry{Prefix: s.prefix, Cluster: cluster, Identity: s.identity, HostIP: s.hostIP, NamedPorts: unpackPorts(s.ports)}
		},
		same: func(a, b ipSlot) bool { return a == b },
	}
}

func (t *typedTable[R, S]) put(key string, hash uint64, rec any) bool {
	delete(t.stale, key)
	s := t.pack(rec.(R), hash)
	if old, ok := t.m[key]; ok && t.same(old, s) {
		return false
	}
	t.m[key] = s
	return true
}

func (t *typedTable[R, S]) remove(key string) (any, bool) {
	s, ok := t.m[key]
	if !ok {
		return nil, false
	}
	delete(t.m, key)
	delete(t.stale, key)
	return t.unpack(s), true
}

// maxReserve bounds reserve: its n comes from a sync marker, which another
// cluster wrote.
const maxReserve = 1 << 16

func (t *typedTable[R, S]) reserve(n int) {
	if len(t.m) == 0 && n > 0 {
		t.m = make(map[string]S, min(n, maxReserve))
	}
}

func (t *typedTable[R, S]) markStale() {
	t.stale = make(map[string]struct{}, len(t.m))
	for k := range t.m {
		t.stale[k] = struct{}{}
	}
}

func (t *typedTable[R, S]) staleKeys() []string {
	out := keysOf(t.stale)
	t.stale = nil
	return out
}

func (t *typedTable[R, S]) keys() []string { return keysOf(t.m) }

func (t *typedTable[R, S]) len() int { return len(t.m) }

// each calls f for every record.
func (t *typedTable[R, S]) each(f func(R)) {
	for _, s := range t.m {
		f(t.unpack(s))
	}
}

func keysOf[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
