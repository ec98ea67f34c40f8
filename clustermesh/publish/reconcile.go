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
)

// reconciler is owned by one session's loop goroutine; only the
// Publisher's desired state is shared (under p.mu).
type reconciler struct {
	p      *Publisher
	leases *leaseSet
	// written holds the value each owned key has in the store under one of
	// the session's active leases. A key bound to another lease is not in
	// written: it must be rewritten to survive.
	written map[string][]byte
	// present holds every owned key known to exist in the store (any
	// lease), with its kind, so undesired ones can be deleted.
	present map[string]clustermesh.Kind
	// markers holds the sync marker values written in this session.
	markers map[clustermesh.Kind][]byte
	// swept records the primed kinds whose leftovers were scheduled for
	// deletion.
	swept map[clustermesh.Kind]bool
	// unmarked records the kinds whose marker was withdrawn in this
	// session (a service layout not written).
	unmarked map[clustermesh.Kind]bool
}

// adopt records what the store holds at session start.
func (r *reconciler) adopt(owned []kvstore.KeyValue) {
	for _, kv := range owned {
		pk, err := clustermesh.ParseKey(kv.Key)
		if err != nil || pk.Config {
			continue
		}
		if pk.Synced {
			if r.leases.isActive(kv.Lease) {
				r.markers[clustermesh.Kind(pk.Name)] = kv.Value
			}
			continue
		}
		r.present[kv.Key] = pk.Kind
		if r.leases.isActive(kv.Lease) {
			r.written[kv.Key] = kv.Value
		}
	}
	// Every desired key and every present key is looked at once.
	r.p.mu.Lock()
	for key := range r.p.desired {
		r.p.dirty[key] = struct{}{}
	}
	for key := range r.present {
		r.p.dirty[key] = struct{}{}
	}
	r.p.wakeUp()
	r.p.mu.Unlock()
}

type op struct {
	key    string
	kind   clustermesh.Kind
	value  []byte // nil: delete
	delete bool
	lease  kvstore.LeaseID // a put's, chosen just before its phase
}

// pass writes what differs between desired and written, then sync markers.
func (r *reconciler) pass(ctx context.Context) error {
	if err := r.apply(ctx, r.plan()); err != nil {
		return err
	}
	return r.writeMarkers(ctx)
}

// plan takes the dirty set and turns it into writes.
func (r *reconciler) plan() []op {
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for kind := range p.primed {
		if !r.swept[kind] {
			r.swept[kind] = true
			for key, k := range r.present {
				if k == kind {
					p.dirty[key] = struct{}{}
				}
			}
		}
	}
	var ops []op
	for key := range p.dirty {
		want, desired := p.desired[key]
		have, written := r.written[key]
		switch {
		case desired && (!written || !bytes.Equal(have, want)):
			ops = append(ops, op{key: key, kind: p.kindOf[key], value: want})
		case desired:
			// up to date
		case r.present[key] != "":
			kind := r.present[key]
			if !p.primed[kind] {
				continue // full desired set unknown yet: keep it until Replace
			}
			ops = append(ops, op{key: key, kind: kind, delete: true})
		}
		delete(p.dirty, key)
	}
	return ops
}

// apply runs ops in phases (see opPhase), each with bounded concurrency.
// Failed ops, and those of phases not reached, are marked dirty again.
func (r *reconciler) apply(ctx context.Context, ops []op) error {
	if len(ops) == 0 {
		return nil
	}
	sortOps(ops)
	for len(ops) > 0 {
		n := 1
		for n < len(ops) && opPhase(ops[n]) == opPhase(ops[0]) {
			n++
		}
		err := r.assignLeases(ctx, ops[:n])
		if err != nil {
			n = 0 // nothing of this phase ran: all of it is dirty again
		} else {
			err = r.applyPhase(ctx, ops[:n])
		}
		if err != nil {
			r.p.mu.Lock()
			for _, o := range ops[n:] {
				r.p.dirty[o.key] = struct{}{}
			}
			r.p.mu.Unlock()
			return err
		}
		ops = ops[n:]
	}
	r.p.setOK()
	return nil
}

// assignLeases chooses the lease of each put in ops.
func (r *reconciler) assignLeases(ctx context.Context, ops []op) error {
	var keys []string
	for _, o := range ops {
		if !o.delete {
			keys = append(keys, o.key)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	leases, err := r.leases.assign(ctx, keys)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	for i := range ops {
		if !ops[i].delete {
			ops[i].lease = leases[ops[i].key]
		}
	}
	return nil
}

// applyPhase runs ops concurrently, at most WriteConcurrency at a time.
func (r *reconciler) applyPhase(ctx context.Context, ops []op) error {
	sem := make(chan struct{}, r.p.cfg.WriteConcurrency)
	var (
		mu       sync.Mutex
		errs     []error
		deniedV2 bool
		wg       sync.WaitGroup
	)
	for _, o := range ops {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			var err error
			if o.delete {
				err = r.p.store.Delete(ctx, o.key)
			} else {
				err = r.p.store.Put(ctx, o.key, o.value, o.lease)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				deniedV2 = deniedV2 || (o.kind == clustermesh.KindServicesV2 && errors.Is(err, kvstore.ErrPermissionDenied))
				errs = append(errs, fmt.Errorf("publish %s %s: %w", o.kind, o.key, err))
				r.p.mu.Lock()
				r.p.dirty[o.key] = struct{}{}
				r.p.mu.Unlock()
				return
			}
			if o.delete {
				delete(r.written, o.key)
				delete(r.present, o.key)
				r.leases.deleted(o.key)
				r.p.metrics.writes.WithLabelValues(string(o.kind), "delete").Inc()
			} else {
				r.written[o.key] = o.value
				r.present[o.key] = o.kind
				r.leases.written(o.key, o.lease)
				r.p.metrics.writes.WithLabelValues(string(o.kind), "put").Inc()
			}
		}()
	}
	wg.Wait()
	r.p.mu.Lock()
	r.p.status.LastWrite = time.Now()
	r.p.mu.Unlock()
	if deniedV2 {
		// A broker from before the chunked layout: its role for this
		// cluster lacks the prefix until it is upgraded or restarted.
		return fmt.Errorf("the broker does not grant this cluster the %s prefix yet: upgrade or restart the broker (for an external etcd run braid broker enable-auth), or publish with --service-layout=single until then: %w",
			clustermesh.KindServicesV2, errors.Join(errs...))
	}
	return errors.Join(errs...)
}

// writeMarkers writes the sync marker of every primed kind once its
// desired set is fully written.
func (r *reconciler) writeMarkers(ctx context.Context) error {
	p := r.p
	p.mu.Lock()
	type marker struct {
		kind clustermesh.Kind
		val  []byte
	}
	var todo, drop []marker
	for kind := range p.primed {
		if !p.markerWanted(kind) {
			if !r.unmarked[kind] {
				drop = append(drop, marker{kind: kind})
			}
			continue
		}
		val, _ := json.Marshal(clustermesh.SyncMarker{Entries: p.counts[kind]})
		if _, ok := r.markers[kind]; ok {
			// Written in this session: the marker's job (saying the first
			// full publish is done) is finished; counts are not kept current
			// to avoid a write per change.
			p.status.Synced[kind] = true
			continue
		}
		todo = append(todo, marker{kind, val})
	}
	p.mu.Unlock()
	for _, m := range drop {
		// The layout is no longer written: its marker goes, so a consumer
		// reading only that layout does not take us for synced.
		if err := p.store.Delete(ctx, clustermesh.SyncedKey(p.cfg.Cluster.Name, m.kind)); err != nil {
			return fmt.Errorf("withdraw sync marker for %s: %w", m.kind, err)
		}
		r.unmarked[m.kind] = true
		delete(r.markers, m.kind)
		r.leases.deleted(clustermesh.SyncedKey(p.cfg.Cluster.Name, m.kind))
	}
	for _, m := range todo {
		key := clustermesh.SyncedKey(p.cfg.Cluster.Name, m.kind)
		leases, err := r.leases.assign(ctx, []string{key})
		if err != nil {
			return fmt.Errorf("publish sync marker for %s: %w", m.kind, err)
		}
		if err := p.store.Put(ctx, key, m.val, leases[key]); err != nil {
			return fmt.Errorf("publish sync marker for %s: %w", m.kind, err)
		}
		r.leases.written(key, leases[key])
		r.markers[m.kind] = m.val
		p.mu.Lock()
		p.status.Synced[m.kind] = true
		p.mu.Unlock()
		p.log.Info("kind published", "kind", m.kind)
	}
	for _, k := range clustermesh.Kinds {
		p.mu.Lock()
		n := p.counts[k]
		p.mu.Unlock()
		p.metrics.entries.WithLabelValues(string(k)).Set(float64(n))
	}
	return nil
}

// resync re-lists owned keys and schedules a write for every key whose
// stored value differs from what we believe we wrote.
func (r *reconciler) resync(ctx context.Context) error {
	owned, err := r.p.listOwned(ctx)
	if err != nil {
		return err
	}
	r.leases.observe(owned)
	seen := make(map[string]bool, len(owned))
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	for _, kv := range owned {
		pk, err := clustermesh.ParseKey(kv.Key)
		if err != nil || pk.Config || pk.Synced {
			continue
		}
		seen[kv.Key] = true
		r.present[kv.Key] = pk.Kind
		if !r.leases.isActive(kv.Lease) || !bytes.Equal(r.written[kv.Key], kv.Value) {
			delete(r.written, kv.Key)
			r.p.dirty[kv.Key] = struct{}{}
		}
	}
	for key := range r.written {
		if !seen[key] {
			delete(r.written, key)
			delete(r.present, key)
			r.p.dirty[key] = struct{}{}
		}
	}
	r.p.wakeUp()
	return nil
}
