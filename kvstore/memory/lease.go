package memory

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/braidmesh/braid/kvstore"
)

type lease struct {
	id      kvstore.LeaseID
	ttl     time.Duration
	expires time.Time
	timer   *time.Timer
	keys    map[string]struct{}
}

// GrantLease implements kvstore.Store. Unlike etcd, the TTL is not rounded up
// to whole seconds, so tests can use short leases.
func (s *Store) GrantLease(ctx context.Context, ttl time.Duration) (kvstore.LeaseID, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("grant lease: ttl %v is not positive", ttl)
	}
	if err := s.begin(ctx); err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	defer s.mu.Unlock()
	s.lastLease++
	l := &lease{
		id:      s.lastLease,
		ttl:     ttl,
		expires: time.Now().Add(ttl),
		keys:    make(map[string]struct{}),
	}
	id := l.id
	l.timer = time.AfterFunc(ttl, func() { s.expire(id) })
	s.leases[id] = l
	return id, nil
}

// KeepAlive implements kvstore.Store.
func (s *Store) KeepAlive(ctx context.Context, id kvstore.LeaseID) error {
	if err := s.begin(ctx); err != nil {
		return fmt.Errorf("keep lease %x alive: %w", id, err)
	}
	defer s.mu.Unlock()
	l := s.leases[id]
	if l == nil {
		return fmt.Errorf("keep lease %x alive: %w", id, kvstore.ErrLeaseNotFound)
	}
	l.expires = time.Now().Add(l.ttl)
	l.timer.Reset(l.ttl)
	return nil
}

// LeaseTTL implements kvstore.Store.
func (s *Store) LeaseTTL(ctx context.Context, id kvstore.LeaseID) (time.Duration, error) {
	if err := s.begin(ctx); err != nil {
		return 0, fmt.Errorf("read TTL of lease %x: %w", id, err)
	}
	defer s.mu.Unlock()
	l := s.leases[id]
	if l == nil {
		return 0, fmt.Errorf("read TTL of lease %x: %w", id, kvstore.ErrLeaseNotFound)
	}
	return max(time.Until(l.expires), 0), nil
}

// RevokeLease implements kvstore.Store.
func (s *Store) RevokeLease(ctx context.Context, id kvstore.LeaseID) error {
	if err := s.begin(ctx); err != nil {
		return fmt.Errorf("revoke lease %x: %w", id, err)
	}
	defer s.mu.Unlock()
	l := s.leases[id]
	if l == nil {
		return fmt.Errorf("revoke lease %x: %w", id, kvstore.ErrLeaseNotFound)
	}
	s.revokeLocked(l)
	return nil
}

// expire runs on l's timer. A KeepAlive may have raced with the timer firing,
// so it re-checks the deadline under the lock.
func (s *Store) expire(id kvstore.LeaseID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[id]
	if s.closed || l == nil {
		return
	}
	if d := time.Until(l.expires); d > 0 {
		l.timer.Reset(d)
		return
	}
	s.revokeLocked(l)
}

// revokeLocked deletes l and its keys, all at one new revision as etcd does.
func (s *Store) revokeLocked(l *lease) {
	l.timer.Stop()
	delete(s.leases, l.id)
	if len(l.keys) == 0 {
		return
	}
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s.rev++
	for _, k := range keys {
		if _, ok := s.data[k]; ok {
			s.deleteLocked(k)
		}
	}
}
