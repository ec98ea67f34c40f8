package remote

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
	hash  uint64
	stale bool
	rec   T
}

type typedTable[T any] struct{ m map[string]slot[T] }

func newTable[T any]() *typedTable[T] { return &typedTable[T]{m: make(map[string]slot[T])} }

func (t *typedTable[T]) put(key string, hash uint64, rec any) bool {
	if s, ok := t.m[key]; ok && s.hash == hash {
		if s.stale {
			s.stale = false
			t.m[key] = s
		}
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
	return s.rec, true
}

func (t *typedTable[T]) markStale() {
	for k, s := range t.m {
		s.stale = true
		t.m[k] = s
	}
}

func (t *typedTable[T]) staleKeys() []string {
	var out []string
	for k, s := range t.m {
		if s.stale {
			out = append(out, k)
		}
	}
	return out
}

func (t *typedTable[T]) keys() []string {
	out := make([]string, 0, len(t.m))
	for k := range t.m {
		out = append(out, k)
	}
	return out
}

func (t *typedTable[T]) len() int { return len(t.m) }

// each calls f for every record.
func (t *typedTable[T]) each(f func(T)) {
	for _, s := range t.m {
		f(s.rec)
	}
}
