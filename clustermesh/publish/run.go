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

// session is one set of leases' life (see leaseSet). It is owned by Run's
// loop.
type session struct {
	r      *reconciler
	leases *leaseSet
	// ctx ends with the session; its cause is errLeaseLost when an active
	// lease is gone, an error wrapping kvstore.ErrPermissionDenied when
	// the broker refused to renew one.
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	stops map[kvstore.LeaseID]context.CancelFunc // each lease's renewal
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
	if err == nil {
		s.revokeRetired()
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

// startSession adopts or grants leases, registers and starts renewing
// the leases.
func (p *Publisher) startSession(ctx context.Context) (*session, error) {
	owned, err := p.listOwned(ctx)
	if err != nil {
		return nil, err
	}
	live, allAlive, err := p.liveLeases(ctx, owned)
	if err != nil {
		return nil, err
	}
	s := &session{stops: map[kvstore.LeaseID]context.CancelFunc{}}
	s.ctx, s.cancel = context.WithCancelCause(ctx)
	s.leases = newLeaseSet(p.cfg.KeysPerLease)
	s.leases.grant = func(ctx context.Context) (kvstore.LeaseID, error) {
		return p.store.GrantLease(ctx, p.cfg.LeaseTTL)
	}
	s.leases.renew = func(id kvstore.LeaseID, retiring bool) { p.renew(s, id, retiring) }
	adopted := s.leases.adopt(live, allAlive)
	for id := range live {
		s.leases.renew(id, !s.leases.isActive(id))
	}
	p.log.Info("publishing", "leases_adopted", adopted, "leases_retiring", s.leases.retiringCount(), "owned_keys", len(owned))

	if err := p.registerIfChanged(s.ctx, owned, s.leases); err != nil {
		s.stop()
		return nil, err
	}
	p.mu.Lock()
	p.status.Registered = true
	p.status.Synced = map[clustermesh.Kind]bool{}
	p.mu.Unlock()
	p.setOK()

	s.r = &reconciler{
		p:       p,
		leases:  s.leases,
		written: make(map[string][]byte, len(owned)),
		present: make(map[string]clustermesh.Kind, len(owned)),
		markers: make(map[clustermesh.Kind][]byte),
		swept:   make(map[clustermesh.Kind]bool),

		unmarked: make(map[clustermesh.Kind]bool),
	}
	p.mu.Lock()
	p.adoptChunksLocked(owned)
	p.mu.Unlock()
	s.r.adopt(owned)
	return s, nil
}

// stop ends the session's renewals and waits for them.
func (s *session) stop() {
	s.cancel(nil)
	s.wg.Wait()
}

// renew starts renewing id for the session s. Losing an active lease ends
// the session; losing a retiring one only drops it (its keys are being
// rewritten anyway).
func (p *Publisher) renew(s *session, id kvstore.LeaseID, retiring bool) {
	ctx, stop := context.WithCancel(s.ctx)
	s.mu.Lock()
	s.stops[id] = stop
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer stop()
		if !p.keepAlive(ctx, s.cancel, id, retiring) {
			s.leases.forget(id)
		}
	}()
}

// revokeRetired revokes the retiring leases whose keys all moved to
// active ones. Failures are logged and retried after the next pass.
func (s *session) revokeRetired() {
	p := s.r.p
	for _, id := range s.leases.emptyRetiring() {
		err := p.store.RevokeLease(s.ctx, id)
		if err != nil && !errors.Is(err, kvstore.ErrLeaseNotFound) {
			p.log.Warn("revoking a retired lease failed, retrying later", "lease", fmt.Sprintf("%x", id), "err", err)
			continue
		}
		s.mu.Lock()
		if stop := s.stops[id]; stop != nil {
			stop()
			delete(s.stops, id)
		}
		s.mu.Unlock()
		s.leases.forget(id)
	}
}

// endSession stops the session's lease renewal, if there is a session.
func (p *Publisher) endSession() {
	if p.sess == nil {
		return
	}
	p.sess.stop()
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

// registerIfChanged registers the cluster unless its config is stored,
// unchanged, on an active lease of ls.
func (p *Publisher) registerIfChanged(ctx context.Context, owned []kvstore.KeyValue, ls *leaseSet) error {
	want, err := json.Marshal(&p.cfg.Cluster)
	if err != nil {
		return fmt.Errorf("register cluster %s: encode: %w", p.cfg.Cluster.Name, err)
	}
	for _, kv := range owned {
		if kv.Key == p.cfg.Cluster.Key() && ls.isActive(kv.Lease) && bytes.Equal(kv.Value, want) {
			// Still check: another cluster may have joined with an overlap
			// while we were away; we keep our registration but say so.
			if err := p.CheckRegistration(ctx); err != nil {
				p.log.Warn("mesh has a conflicting cluster", "err", err)
			}
			return nil
		}
	}
	return p.register(ctx, ls)
}

// keepAlive renews lease every third of its TTL until ctx is done. If the
// lease is gone it returns false, having cancelled the session with
// errLeaseLost unless the lease was retiring; if the broker refuses the
// credentials it cancels the session with that error.
//
// A renewal may take until the lease would expire (counted from the start
// of the last renewal that succeeded, or from now for a lease just
// granted), not just a third of the TTL: when the broker's users or roles
// change, etcd makes every password client authenticate again, and a
// broker busy hashing those passwords can take longer than a third of a
// short TTL to answer. Abandoning such a renewal only starts the
// authentication over, and the lease expires although the broker was
// reachable all along.
func (p *Publisher) keepAlive(ctx context.Context, cancel context.CancelCauseFunc, lease kvstore.LeaseID, retiring bool) bool {
	ttl := p.cfg.LeaseTTL
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return true
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
		case errors.Is(err, kvstore.ErrLeaseNotFound) && retiring:
			p.log.Info("retiring lease expired before its keys moved; rewriting them", "lease", fmt.Sprintf("%x", lease))
			p.loop.Trigger()
			return false
		case errors.Is(err, kvstore.ErrLeaseNotFound):
			p.log.Warn("lease expired; ending the session and re-publishing", "lease", fmt.Sprintf("%x", lease))
			cancel(errLeaseLost)
			p.loop.Trigger()
			return false
		case errors.Is(err, kvstore.ErrPermissionDenied):
			// The broker no longer accepts our credentials: removed.
			err = fmt.Errorf("renew lease: %w", err)
			p.setError(err)
			cancel(err)
			p.loop.Trigger()
			return true
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

// Withdraw revokes every lease the cluster's keys are bound to, deleting
// every key it published.
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
