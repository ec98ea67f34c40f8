package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/kvstore"
)

// GrantLease implements kvstore.Store. etcd counts TTLs in whole seconds, so
// ttl is rounded up; the server may raise it further to its minimum TTL
// (1.5 election timeouts, rounded up to a second).
func (s *Store) GrantLease(ctx context.Context, ttl time.Duration) (kvstore.LeaseID, error) {
	const op = "grant lease"
	if ttl <= 0 {
		return 0, fmt.Errorf("%s: ttl %v is not positive", op, ttl)
	}
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	resp, err := s.client.Grant(ctx, secs)
	if err != nil {
		return 0, s.translate(op, err)
	}
	return kvstore.LeaseID(resp.ID), nil
}

// KeepAlive implements kvstore.Store. The first call for a lease starts a
// keeper (see keeper) that renews it on the client's one long-lived lease
// stream; KeepAlive returns nil once etcd renewed the lease within the last
// half of its TTL, so that it has at least half its TTL left, waiting for
// the next renewal if need be. It returns an error wrapping
// kvstore.ErrLeaseNotFound once the lease is gone (expired or revoked), one
// wrapping kvstore.ErrPermissionDenied when etcd refuses the credentials,
// and ctx's error while etcd is unreachable. The lease stays renewed until
// a TTL after the last call, so it expires between one and two TTLs after
// the last KeepAlive.
func (s *Store) KeepAlive(ctx context.Context, id kvstore.LeaseID) error {
	op := fmt.Sprintf("keep lease %x alive", int64(id))
	if err := s.check(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	for {
		k, err := s.keeper(clientv3.LeaseID(id))
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		err = k.wait(ctx)
		if errors.Is(err, errKeeperIdle) {
			continue // it stopped just before this call: start another
		}
		return s.translate(op, err)
	}
}

// RevokeLease implements kvstore.Store.
func (s *Store) RevokeLease(ctx context.Context, id kvstore.LeaseID) error {
	op := fmt.Sprintf("revoke lease %x", int64(id))
	if err := s.check(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	_, err := s.client.Revoke(ctx, clientv3.LeaseID(id))
	if err == nil {
		s.mu.Lock()
		if k := s.keepers[clientv3.LeaseID(id)]; k != nil {
			k.endLocked(rpctypes.ErrLeaseNotFound)
		}
		s.mu.Unlock()
	}
	return s.translate(op, err)
}

// LeaseTTL implements kvstore.Store. It does not ask for the lease's keys:
// the broker lets only root list those.
func (s *Store) LeaseTTL(ctx context.Context, id kvstore.LeaseID) (time.Duration, error) {
	op := fmt.Sprintf("read TTL of lease %x", int64(id))
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	resp, err := s.client.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return 0, s.translate(op, err)
	}
	if resp.TTL < 0 { // etcd's answer for a lease it does not know
		return 0, fmt.Errorf("%s: %w", op, kvstore.ErrLeaseNotFound)
	}
	return time.Duration(resp.TTL) * time.Second, nil
}
