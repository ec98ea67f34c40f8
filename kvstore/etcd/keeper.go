package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/reconcile"
)

// Keeper timing.
const (
	// keeperTick is how often a keeper checks whether its lease went
	// quiet and whether anyone still asks for it.
	keeperTick = 250 * time.Millisecond
	// firstRenewalWait stands in for the TTL until etcd's first answer
	// says what it is: how long a keeper waits for that answer before it
	// asks after the lease, and how long it outlives its last caller.
	firstRenewalWait = 5 * time.Second
	// leaseProbeTimeout bounds one question about the lease (TimeToLive).
	leaseProbeTimeout = 5 * time.Second
)

// errKeeperIdle ends a keeper nobody asked for a TTL: a KeepAlive that
// meets it starts another.
var errKeeperIdle = errors.New("lease keeper stopped: not asked for a TTL")

// A keeper keeps one lease alive with clientv3's Lease.KeepAlive, which
// sends the renewals of every lease of the client on one gRPC stream,
// opened once (and once again after a lost connection). A renewal of its
// own (KeepAliveOnce) opens a stream each time, and the client
// authenticates again for every stream it opens: with a password that
// costs the broker a bcrypt verification per renewal.
//
// The client renews the lease every third of its TTL and closes the
// keeper's channel when etcd says the lease is gone, when no answer came
// within a TTL, or when the client closes. The keeper then asks etcd
// (TimeToLive, a unary call, which opens no stream) whether the lease
// still exists: if not, it ends with rpctypes.ErrLeaseNotFound; if the
// credentials are refused, with that error; otherwise it keeps the lease
// again after a backoff. It asks the same while a caller waits and no
// renewal came for half a TTL, so a lease revoked by someone else, or
// credentials revoked with the stream cut, are reported as fast as a
// renewal of its own would. A keeper that nobody asked for a TTL ends
// (errKeeperIdle), and the lease then expires a TTL later. Close ends
// every keeper (kvstore.ErrClosed).
//
// The keeper's fields below cancel are guarded by Store.mu; only run's
// goroutine sends on the client.
type keeper struct {
	s      *Store
	id     clientv3.LeaseID
	cancel context.CancelFunc

	ttl      time.Duration // from etcd's last answer; 0 before the first
	renewed  time.Time     // when etcd's last renewal arrived
	started  time.Time
	lastCall time.Time
	waiters  int
	// err is why the keeper ended; nil while it runs.
	err error
	// changed is closed and replaced whenever the above change.
	changed chan struct{}
}

// keeper returns the running keeper of id, starting one if there is none.
func (s *Store) keeper(id clientv3.LeaseID) (*keeper, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, kvstore.ErrClosed
	}
	if k := s.keepers[id]; k != nil {
		return k, nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	now := time.Now()
	k := &keeper{s: s, id: id, cancel: cancel, started: now, lastCall: now, changed: make(chan struct{})}
	if s.keepers == nil {
		s.keepers = make(map[clientv3.LeaseID]*keeper)
	}
	s.keepers[id] = k
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		k.run(ctx)
	}()
	return k, nil
}

// wait returns nil once the lease was renewed within the last half of its
// TTL, the keeper's error once it ended, or ctx's.
func (k *keeper) wait(ctx context.Context) error {
	mu := &k.s.mu
	mu.Lock()
	defer mu.Unlock()
	k.lastCall = time.Now()
	k.waiters++
	defer func() { k.waiters-- }()
	for {
		switch {
		case k.err != nil:
			return k.err
		case k.freshLocked(time.Now()):
			return nil
		}
		changed := k.changed
		mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
		}
		mu.Lock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// freshLocked says etcd renewed the lease within the last half of its TTL.
func (k *keeper) freshLocked(now time.Time) bool {
	return !k.renewed.IsZero() && now.Sub(k.renewed) < k.ttl/2
}

// quietLocked says a caller waits and etcd has not renewed the lease for
// half a TTL (or, before the first renewal, for firstRenewalWait).
func (k *keeper) quietLocked(now time.Time) bool {
	if k.waiters == 0 {
		return false
	}
	if k.renewed.IsZero() {
		return now.Sub(k.started) > firstRenewalWait
	}
	return !k.freshLocked(now)
}

// idleLocked says nobody asked for the lease for a TTL.
func (k *keeper) idleLocked(now time.Time) bool {
	idle := k.ttl
	if idle == 0 {
		idle = firstRenewalWait
	}
	return k.waiters == 0 && now.Sub(k.lastCall) > idle
}

func (k *keeper) changedLocked() {
	close(k.changed)
	k.changed = make(chan struct{})
}

// endLocked ends the keeper with err, once.
func (k *keeper) endLocked(err error) {
	if k.err != nil {
		return
	}
	k.err = err
	k.cancel()
	if k.s.keepers[k.id] == k {
		delete(k.s.keepers, k.id)
	}
	k.changedLocked()
}

func (k *keeper) end(err error) {
	k.s.mu.Lock()
	defer k.s.mu.Unlock()
	k.endLocked(err)
}

// run keeps the lease until the keeper ends or ctx is done.
func (k *keeper) run(ctx context.Context) {
	bo := reconcile.NewBackoff(minRetryDelay, maxRetryDelay)
	for {
		ch, err := k.s.client.KeepAlive(ctx, k.id)
		if err != nil {
			k.end(err) // the client closed
			return
		}
		if err := k.follow(ctx, ch, bo); err != nil {
			k.end(err)
			return
		}
		if ctx.Err() == nil {
			k.s.log.Debug("lease keep-alive ended on a live lease, keeping it again", "lease", fmt.Sprintf("%x", int64(k.id)))
		}
		if !reconcile.Wait(ctx, bo.Next()) {
			k.end(k.ctxErr())
			return
		}
	}
}

// ctxErr is why the keeper's context ended: the store closed, or the
// keeper itself ended (its error is already set then).
func (k *keeper) ctxErr() error {
	if k.s.ctx.Err() != nil {
		return kvstore.ErrClosed
	}
	return errKeeperIdle
}

// follow records etcd's renewals from ch until it closes. It returns nil
// when the lease should be kept again, or why the keeper ends.
func (k *keeper) follow(ctx context.Context, ch <-chan *clientv3.LeaseKeepAliveResponse, bo *reconcile.Backoff) error {
	tick := time.NewTicker(keeperTick)
	defer tick.Stop()
	var asked time.Time
	for {
		select {
		case resp, ok := <-ch:
			if !ok {
				if ctx.Err() != nil {
					return k.ctxErr()
				}
				// Gone, unanswered for a TTL, or the client closed.
				return k.ask(ctx)
			}
			now := time.Now()
			k.s.mu.Lock()
			k.renewed, k.ttl = now, time.Duration(resp.TTL)*time.Second
			k.changedLocked()
			idle := k.idleLocked(now)
			k.s.mu.Unlock()
			bo.Reset()
			if idle {
				return errKeeperIdle
			}
		case now := <-tick.C:
			k.s.mu.Lock()
			idle, quiet := k.idleLocked(now), k.quietLocked(now)
			k.s.mu.Unlock()
			if idle {
				return errKeeperIdle
			}
			// Ask at most every half TTL (or firstRenewalWait).
			if quiet && now.Sub(asked) > k.askInterval() {
				asked = now
				if err := k.ask(ctx); err != nil {
					return err
				}
			}
		case <-ctx.Done():
			return k.ctxErr()
		}
	}
}

func (k *keeper) askInterval() time.Duration {
	k.s.mu.Lock()
	defer k.s.mu.Unlock()
	if k.ttl == 0 {
		return firstRenewalWait
	}
	return k.ttl / 2
}

// ask asks etcd whether the lease exists. It returns the error the
// keeper ends with (the lease is gone, the credentials refused, the
// keeper's context done), or nil: alive, or no answer.
func (k *keeper) ask(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, leaseProbeTimeout)
	resp, err := k.s.client.TimeToLive(pctx, k.id)
	cancel()
	switch {
	case ctx.Err() != nil:
		return k.ctxErr()
	case err == nil && resp.TTL < 0: // etcd's answer for a lease it does not know
		return rpctypes.ErrLeaseNotFound
	case err == nil:
		return nil
	case errors.Is(translateErr("", err), kvstore.ErrPermissionDenied), errors.Is(err, rpctypes.ErrLeaseNotFound):
		return err
	}
	// Unreachable, most likely: callers see their own deadline pass.
	k.s.log.Debug("asking etcd after a quiet lease", "lease", fmt.Sprintf("%x", int64(k.id)), "err", err)
	return nil
}
