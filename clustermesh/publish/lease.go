package publish

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/braidmesh/braid/kvstore"
)

// DefaultKeysPerLease bounds how many keys a Publisher binds to one lease.
//
// etcd checks, on every Put bound to a lease by a user other than root,
// that the user may write every key already bound to that lease
// (apply.checkLeasePuts), reading the user from its backend once per key.
// With all of a cluster's keys on one lease, publishing N keys costs N²/2
// such checks and every later write N; with at most K keys a lease, N·K/2
// and K. 64 keeps a sim cluster (20 nodes × 200 endpoints, 287 keys) on 5
// leases, and a lease's renewal is one message on the client's lease
// stream, answered by the leader without a raft round.
const DefaultKeysPerLease = 64

// leaseSet is one session's leases and which owned key is bound to which.
//
// Keys go to the first active lease with room (grant order), so leases fill
// up one after the other and a new one is granted only when all are full;
// a key keeps its lease across updates. Active leases are the session's:
// losing any of them ends it. Retiring leases were found on owned keys at
// the start but are not adopted (one of the set was gone, or a lease held
// more than the bound, as one written by an older publisher does): they
// are renewed until their keys have moved to active leases, then revoked,
// so no key expires before it was rewritten.
//
// Its methods are safe for concurrent use (a pass's writes report back
// concurrently); they never hold mu across I/O.
type leaseSet struct {
	max int
	// grant grants a lease with the session's TTL; renew starts renewing
	// one. The session provides both.
	grant func(context.Context) (kvstore.LeaseID, error)
	renew func(id kvstore.LeaseID, retiring bool)

	mu       sync.Mutex
	active   []kvstore.LeaseID // in grant order
	retiring map[kvstore.LeaseID]bool
	count    map[kvstore.LeaseID]int    // keys bound, per lease of ours
	of       map[string]kvstore.LeaseID // key -> lease of ours it is bound to
}

func newLeaseSet(max int) *leaseSet {
	return &leaseSet{
		max:      max,
		retiring: map[kvstore.LeaseID]bool{},
		count:    map[kvstore.LeaseID]int{},
		of:       map[string]kvstore.LeaseID{},
	}
}

// liveLeases asks for every lease the owned keys are bound to whether it
// is alive (renewing it). It returns the live ones and their keys, and
// whether all of them were alive.
func (p *Publisher) liveLeases(ctx context.Context, owned []kvstore.KeyValue) (map[kvstore.LeaseID][]string, bool, error) {
	byLease := map[kvstore.LeaseID][]string{}
	for _, kv := range owned {
		if kv.Lease != 0 {
			byLease[kv.Lease] = append(byLease[kv.Lease], kv.Key)
		}
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
		dead []kvstore.LeaseID
	)
	for id := range byLease {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.store.KeepAlive(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, kvstore.ErrLeaseNotFound):
				dead = append(dead, id)
			case err != nil:
				errs = append(errs, fmt.Errorf("renew lease %x: %w", id, err))
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, false, err
	}
	for _, id := range dead {
		delete(byLease, id)
	}
	return byLease, len(dead) == 0, nil
}

// adopt takes over the live leases found on owned keys: as the session's
// active leases when all were alive and each holds at most max keys, else
// as retiring ones. It returns how many were adopted as active.
func (ls *leaseSet) adopt(live map[kvstore.LeaseID][]string, allAlive bool) int {
	ids := make([]kvstore.LeaseID, 0, len(live))
	for id := range live {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] }) // etcd grants ascending IDs
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, id := range ids {
		keys := live[id]
		if allAlive && len(keys) <= ls.max {
			ls.active = append(ls.active, id)
		} else {
			ls.retiring[id] = true
		}
		ls.count[id] = len(keys)
		for _, k := range keys {
			ls.of[k] = id
		}
	}
	return len(ls.active)
}

// isActive says id is one of the session's active leases.
func (ls *leaseSet) isActive(id kvstore.LeaseID) bool {
	if id == 0 {
		return false
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.isActiveLocked(id)
}

func (ls *leaseSet) isActiveLocked(id kvstore.LeaseID) bool {
	_, ok := ls.count[id]
	return ok && !ls.retiring[id]
}

// assign chooses the lease each key is to be written with: the active
// lease it is bound to, else the first active lease with room, granting
// new leases (and starting their renewal) when none has any. Nothing is
// recorded until written reports the write.
func (ls *leaseSet) assign(ctx context.Context, keys []string) (map[string]kvstore.LeaseID, error) {
	out := make(map[string]kvstore.LeaseID, len(keys))
	reserved := map[kvstore.LeaseID]int{}
	next := 0 // active leases before next are full
	for _, key := range keys {
		ls.mu.Lock()
		if id, ok := ls.of[key]; ok && ls.isActiveLocked(id) {
			out[key] = id
			ls.mu.Unlock()
			continue
		}
		var id kvstore.LeaseID
		for ; next < len(ls.active); next++ {
			if c := ls.active[next]; ls.count[c]+reserved[c] < ls.max {
				id = c
				break
			}
		}
		ls.mu.Unlock()
		if id == 0 {
			var err error
			if id, err = ls.grant(ctx); err != nil {
				return nil, fmt.Errorf("grant lease: %w", err)
			}
			ls.mu.Lock()
			ls.active = append(ls.active, id)
			ls.count[id] = 0
			ls.mu.Unlock()
			ls.renew(id, false)
		}
		reserved[id]++
		out[key] = id
	}
	return out, nil
}

// written records that key was written bound to id.
func (ls *leaseSet) written(key string, id kvstore.LeaseID) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	old, ok := ls.of[key]
	if ok && old == id {
		return
	}
	if ok {
		ls.count[old]--
	}
	ls.of[key] = id
	ls.count[id]++
}

// deleted records that key is gone.
func (ls *leaseSet) deleted(key string) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if old, ok := ls.of[key]; ok {
		ls.count[old]--
		delete(ls.of, key)
	}
}

// observe corrects the record from a listing of every owned key: which
// key is bound to which of our leases now.
func (ls *leaseSet) observe(owned []kvstore.KeyValue) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	clear(ls.of)
	for id := range ls.count {
		ls.count[id] = 0
	}
	for _, kv := range owned {
		if _, ours := ls.count[kv.Lease]; ours {
			ls.of[kv.Key] = kv.Lease
			ls.count[kv.Lease]++
		}
	}
}

// forget drops a retiring lease that expired or was revoked: its keys,
// if any were left, are gone.
func (ls *leaseSet) forget(id kvstore.LeaseID) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if !ls.retiring[id] {
		return
	}
	for k, l := range ls.of {
		if l == id {
			delete(ls.of, k)
		}
	}
	delete(ls.count, id)
	delete(ls.retiring, id)
}

// emptyRetiring returns the retiring leases no key is bound to any more.
func (ls *leaseSet) emptyRetiring() []kvstore.LeaseID {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var out []kvstore.LeaseID
	for id := range ls.retiring {
		if ls.count[id] <= 0 {
			out = append(out, id)
		}
	}
	return out
}

// retiringCount says how many leases are retiring.
func (ls *leaseSet) retiringCount() int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return len(ls.retiring)
}
