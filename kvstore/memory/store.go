package memory

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/braidmesh/braid/kvstore"
)

var _ kvstore.Store = (*Store)(nil)

// Store is an in-process kvstore.Store. The zero value is not usable; call New.
type Store struct {
	mu         sync.Mutex
	closed     bool
	done       chan struct{} // closed by Close; ends every watch
	rev        int64         // current revision; the first write makes it 1
	compactRev int64
	data       map[string]*kvstore.KeyValue
	leases     map[kvstore.LeaseID]*lease
	lastLease  kvstore.LeaseID
	watchers   map[*watcher]struct{}

	wg sync.WaitGroup // watch goroutines
}

// New returns an empty store at revision 1, as a fresh etcd is.
func New() *Store {
	return &Store{
		done:     make(chan struct{}),
		rev:      1,
		data:     make(map[string]*kvstore.KeyValue),
		leases:   make(map[kvstore.LeaseID]*lease),
		watchers: make(map[*watcher]struct{}),
	}
}

// begin checks ctx and the closed flag and, on success, returns with s.mu held.
func (s *Store) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return kvstore.ErrClosed
	}
	return nil
}

// Get implements kvstore.Store.
func (s *Store) Get(ctx context.Context, key string) (kvstore.KeyValue, error) {
	if err := s.begin(ctx); err != nil {
		return kvstore.KeyValue{}, fmt.Errorf("get %s: %w", key, err)
	}
	defer s.mu.Unlock()
	kv, ok := s.data[key]
	if !ok {
		return kvstore.KeyValue{}, fmt.Errorf("get %s: %w", key, kvstore.ErrNotFound)
	}
	return clone(kv), nil
}

// List implements kvstore.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]kvstore.KeyValue, int64, error) {
	if err := s.begin(ctx); err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", prefix, err)
	}
	defer s.mu.Unlock()
	return s.listLocked(prefix), s.rev, nil
}

func (s *Store) listLocked(prefix string) []kvstore.KeyValue {
	var out []kvstore.KeyValue
	for k, kv := range s.data {
		if strings.HasPrefix(k, prefix) {
			out = append(out, clone(kv))
		}
	}
	slices.SortFunc(out, func(a, b kvstore.KeyValue) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// Put implements kvstore.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte, lease kvstore.LeaseID) error {
	if err := s.begin(ctx); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer s.mu.Unlock()
	if err := s.putLocked(key, value, lease); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// CreateIfAbsent implements kvstore.Store.
func (s *Store) CreateIfAbsent(ctx context.Context, key string, value []byte, lease kvstore.LeaseID) (bool, error) {
	if err := s.begin(ctx); err != nil {
		return false, fmt.Errorf("create %s: %w", key, err)
	}
	defer s.mu.Unlock()
	if _, ok := s.data[key]; ok {
		return false, nil
	}
	if err := s.putLocked(key, value, lease); err != nil {
		return false, fmt.Errorf("create %s: %w", key, err)
	}
	return true, nil
}

func (s *Store) putLocked(key string, value []byte, id kvstore.LeaseID) error {
	var l *lease
	if id != 0 {
		l = s.leases[id]
		if l == nil {
			return kvstore.ErrLeaseNotFound
		}
	}
	s.rev++
	kv := &kvstore.KeyValue{
		Key:            key,
		Value:          slices.Clone(value),
		CreateRevision: s.rev,
		ModRevision:    s.rev,
		Lease:          id,
	}
	if old, ok := s.data[key]; ok {
		kv.CreateRevision = old.CreateRevision
		if old.Lease != 0 && old.Lease != id {
			if ol := s.leases[old.Lease]; ol != nil {
				delete(ol.keys, key)
			}
		}
	}
	if l != nil {
		l.keys[key] = struct{}{}
	}
	s.data[key] = kv
	s.notifyLocked(kvstore.Event{Kind: kvstore.EventUpsert, Key: key, Value: kv.Value, Revision: s.rev})
	return nil
}

// Delete implements kvstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.begin(ctx); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	defer s.mu.Unlock()
	if _, ok := s.data[key]; !ok {
		return nil
	}
	s.rev++
	s.deleteLocked(key)
	return nil
}

// deleteLocked removes an existing key at the current revision.
func (s *Store) deleteLocked(key string) {
	kv := s.data[key]
	if kv.Lease != 0 {
		if l := s.leases[kv.Lease]; l != nil {
			delete(l.keys, key)
		}
	}
	delete(s.data, key)
	s.notifyLocked(kvstore.Event{Kind: kvstore.EventDelete, Key: key, Revision: s.rev})
}

// Revision returns the store's current revision.
func (s *Store) Revision() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

// Close implements kvstore.Store. It stops every lease timer and watch and
// waits for the watch goroutines to exit.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
		for _, l := range s.leases {
			l.timer.Stop()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func clone(kv *kvstore.KeyValue) kvstore.KeyValue {
	c := *kv
	c.Value = slices.Clone(kv.Value)
	return c
}
