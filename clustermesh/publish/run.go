package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/reconcile"
)

// Publish retry backoff bounds.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// Run registers the cluster and then keeps the store equal to the desired
// state until ctx is done, renewing the lease. It returns at once with a
// *clustermesh.RegistrationError when the mesh refuses the cluster, and
// with an error wrapping kvstore.ErrPermissionDenied when the credentials
// do not allow writing our own keys; other failures are retried with
// backoff. Run returns nil when ctx is done. The lease is not revoked on
// return: entries outlive a restart and expire after the TTL if the process
// does not come back (use Withdraw to leave the mesh).
//
// Run is a reconcile.Loop named "publish": each round starts a session if
// there is none (adopt or grant a lease, register), then writes what
// changed; every ResyncInterval a round first re-lists the owned keys. Run
// must not be called concurrently with itself.
func (p *Publisher) Run(ctx context.Context) error {
	defer p.endSession()
	return p.loop.Run(ctx)
}

// session is one lease's life. It is owned by Run's loop.
type session struct {
	r *reconciler
	// ctx ends with the session; its cause is errLeaseLost when the lease
	// is gone, an error wrapping kvstore.ErrPermissionDenied when the
	// broker refused to renew it.
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
}

// round is one round of Run's loop.
func (p *Publisher) round(ctx context.Context, resync bool) error {
	if p.sess == nil {
		s, err := p.startSession(ctx)
		if err != nil {
			return p.fail(err)
		}
		p.sess = s
		resync = false // the session just listed everything
	}
	s := p.sess
	var err error
	if resync {
		err = s.r.resync(s.ctx)
	}
	if err == nil {
		err = s.r.pass(s.ctx)
	}
	if errors.Is(err, kvstore.ErrLeaseNotFound) || errors.Is(context.Cause(s.ctx), errLeaseLost) {
		p.endSession()
		return p.fail(fmt.Errorf("publish: %w", errLeaseLost))
	}
	if cause := context.Cause(s.ctx); errors.Is(cause, kvstore.ErrPermissionDenied) {
		p.endSession()
		return p.fail(cause) // the broker removed us: permanent
	}
	return p.fail(err)
}

// fail records err (if any) and marks the errors that end Run.
func (p *Publisher) fail(err error) error {
	if err == nil {
		return nil
	}
	p.setError(err)
	var regErr *clustermesh.RegistrationError
	if errors.As(err, &regErr) || errors.Is(err, kvstore.ErrPermissionDenied) {
		return reconcile.Permanent(err)
	}
	return err
}

// startSession adopts or grants a lease, registers and starts renewing
// the lease.
func (p *Publisher) startSession(ctx context.Context) (*session, error) {
	owned, err := p.listOwned(ctx)
	if err != nil {
		return nil, err
	}
	lease, adopted, err := p.acquireLease(ctx, owned)
	if err != nil {
		return nil, err
	}
	p.log.Info("publishing", "lease", fmt.Sprintf("%x", lease), "adopted", adopted, "owned_keys", len(owned))

	if err := p.registerIfChanged(ctx, owned, lease); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.status.Registered = true
	p.status.Synced = map[clustermesh.Kind]bool{}
	p.mu.Unlock()
	p.setOK()

	s := &session{r: &reconciler{
		p:       p,
		lease:   lease,
		written: make(map[string][]byte, len(owned)),
		present: make(map[string]clustermesh.Kind, len(owned)),
		markers: make(map[clustermesh.Kind][]byte),
		swept:   make(map[clustermesh.Kind]bool),

		unmarked: make(map[clustermesh.Kind]bool),
	}}
	p.mu.Lock()
	p.adoptChunksLocked(owned)
	p.mu.Unlock()
	s.ctx, s.cancel = context.WithCancelCause(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		p.keepAlive(s.ctx, s.cancel, lease)
	}()
	s.r.adopt(owned)
	return s, nil
}

// endSession stops the session's lease renewal, if there is a session.
func (p *Publisher) endSession() {
	if p.sess == nil {
		return
	}
	p.sess.cancel(nil)
	p.sess.wg.Wait()
	p.sess = nil
}

// listOwned reads every key the cluster owns.
func (p *Publisher) listOwned(ctx context.Context) ([]kvstore.KeyValue, error) {
	var out []kvstore.KeyValue
	for _, prefix := range clustermesh.OwnedPrefixes(p.cfg.Cluster.Name) {
		kvs, _, err := p.store.List(ctx, prefix)
		if err != nil {
			return nil, fmt.Errorf("list own keys under %s: %w", prefix, err)
		}
		out = append(out, kvs...)
	}
	kv, err := p.store.Get(ctx, p.cfg.Cluster.Key())
	switch {
	case err == nil:
		out = append(out, kv)
	case !errors.Is(err, kvstore.ErrNotFound):
		return nil, fmt.Errorf("read own cluster config: %w", err)
	}
	return out, nil
}

// acquireLease adopts the live lease the owned keys are bound to, if any,
// or grants a new one.
func (p *Publisher) acquireLease(ctx context.Context, owned []kvstore.KeyValue) (kvstore.LeaseID, bool, error) {
	votes := map[kvstore.LeaseID]int{}
	for _, kv := range owned {
		if kv.Lease != 0 {
			votes[kv.Lease]++
		}
	}
	var best kvstore.LeaseID
	for id, n := range votes {
		if best == 0 || n > votes[best] {
			best = id
		}
	}
	if best != 0 {
		if err := p.store.KeepAlive(ctx, best); err == nil {
			return best, true, nil
		} else if !errors.Is(err, kvstore.ErrLeaseNotFound) {
			return 0, false, fmt.Errorf("renew lease %x: %w", best, err)
		}
	}
	id, err := p.store.GrantLease(ctx, p.cfg.LeaseTTL)
	if err != nil {
		return 0, false, fmt.Errorf("grant lease: %w", err)
	}
	return id, false, nil
}

func (p *Publisher) registerIfChanged(ctx context.Context, owned []kvstore.KeyValue, lease kvstore.LeaseID) error {
	want, err := json.Marshal(&p.cfg.Cluster)
	if err != nil {
		return fmt.Errorf("register cluster %s: encode: %w", p.cfg.Cluster.Name, err)
	}
	for _, kv := range owned {
		if kv.Key == p.cfg.Cluster.Key() && kv.Lease == lease && bytes.Equal(kv.Value, want) {
			// Still check: another cluster may have joined with an overlap
			// while we were away; we keep our registration but say so.
			if err := p.CheckRegistration(ctx); err != nil {
				p.log.Warn("mesh has a conflicting cluster", "err", err)
			}
			return nil
		}
	}
	return p.register(ctx, lease)
}

// keepAlive renews lease every third of its TTL and cancels the session
// with errLeaseLost if the lease is gone.
//
// A renewal may take until the lease would expire (counted from the start
// of the last renewal that succeeded, or from now for a lease just
// granted), not just a third of the TTL: when the broker's users or roles
// change, etcd makes every password client authenticate again, and a
// broker busy hashing those passwords can take longer than a third of a
// short TTL to answer. Abandoning such a renewal only starts the
// authentication over, and the lease expires although the broker was
// reachable all along.
func (p *Publisher) keepAlive(ctx context.Context, cancel context.CancelCauseFunc, lease kvstore.LeaseID) {
	ttl := p.cfg.LeaseTTL
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		rctx, rcancel := context.WithDeadline(ctx, renewalDeadline(renewed, start, ttl))
		err := p.store.KeepAlive(rctx, lease)
		rcancel()
		switch {
		case err == nil:
			renewed = start
			p.setOK()
		case errors.Is(err, kvstore.ErrLeaseNotFound):
			p.log.Warn("lease expired; re-publishing under a new lease", "lease", fmt.Sprintf("%x", lease))
			cancel(errLeaseLost)
			p.loop.Trigger()
			return
		case errors.Is(err, kvstore.ErrPermissionDenied):
			// The broker no longer accepts our credentials: removed.
			err = fmt.Errorf("renew lease: %w", err)
			p.setError(err)
			cancel(err)
			p.loop.Trigger()
			return
		case ctx.Err() == nil:
			p.setError(fmt.Errorf("renew lease: %w", err))
			p.log.Warn("lease renewal failed, retrying", "err", err)
		}
	}
}

// renewalDeadline is how long a renewal started at now may take: until the
// lease renewed at renewed expires, and at least a third of the TTL (the
// lease may still be alive: the server counts from when it got the last
// renewal, after we sent it).
func renewalDeadline(renewed, now time.Time, ttl time.Duration) time.Time {
	return later(renewed.Add(ttl), now.Add(ttl/3))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Withdraw revokes the cluster's lease, deleting every key it published.
// Use it when the cluster leaves the mesh; Run should be stopped first.
func (p *Publisher) Withdraw(ctx context.Context) error {
	owned, err := p.listOwned(ctx)
	if err != nil {
		return fmt.Errorf("withdraw cluster %s: %w", p.cfg.Cluster.Name, err)
	}
	var errs []error
	revoked := map[kvstore.LeaseID]bool{}
	for _, kv := range owned {
		if kv.Lease != 0 && !revoked[kv.Lease] {
			revoked[kv.Lease] = true
			if err := p.store.RevokeLease(ctx, kv.Lease); err != nil && !errors.Is(err, kvstore.ErrLeaseNotFound) {
				errs = append(errs, err)
			}
		} else if kv.Lease == 0 {
			errs = append(errs, p.store.Delete(ctx, kv.Key))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("withdraw cluster %s: %w", p.cfg.Cluster.Name, err)
	}
	return nil
}
