package remote

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
)

// syncSlotTimeout is the longest a cluster holds an initial-sync slot.
const syncSlotTimeout = 30 * time.Second

// cluster mirrors one remote cluster. Its watch goroutines apply events
// under mu; snapshots are rebuilt lazily when version moved.
type cluster struct {
	w      *Watcher
	name   clustermesh.ClusterName
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}  // closed when run returned
	wg     sync.WaitGroup // watch goroutines started by run

	mu         sync.Mutex
	cfg        clustermesh.ClusterConfig
	nodes      *typedTable[clustermesh.Node, hashed[clustermesh.Node]]
	identities *typedTable[clustermesh.Identity, hashed[clustermesh.Identity]]
	ips        *typedTable[clustermesh.IPEntry, ipSlot]
	// services holds each service as consumers see it, by
	// "namespace/name": from its chunked layout when that is complete,
	// from its single-value layout otherwise (see effectiveLocked).
	services *typedTable[clustermesh.Service, hashed[clustermesh.Service]]
	// servicesV1 and servicesV2 hold what each layout's watch delivered.
	servicesV1 *typedTable[clustermesh.Service, hashed[clustermesh.Service]]
	servicesV2 *typedTable[servicePart, hashed[servicePart]]
	// layouts holds the layout each service in services came from.
	layouts map[string]clustermesh.Kind
	// tables holds each kind's records as its watch delivered them.
	tables map[clustermesh.Kind]table
	// entryGauges are the per-kind entry count series, looked up once
	// rather than on every event.
	entryGauges map[clustermesh.Kind]prometheus.Gauge
	// strings interns node and zone names repeated across backends.
	strings    map[string]string
	markerSeen map[clustermesh.Kind]bool
	listed     map[clustermesh.Kind]bool
	// markers are the sync markers' raw values, for Watcher.Entries.
	markers map[clustermesh.Kind][]byte
	// initialKinds is how many kinds had a marker when the marker list
	// completed (-1 until then); releaseSlot gives the Watcher's initial
	// sync slot back once they are all listed (idempotent).
	initialKinds int
	releaseSlot  func()
	synced       bool
	connected    bool
	failures     int
	invalid      int
	lastErr      string
	rejected     []string // most recent rejection reasons, newest last
	claims       []string // config claims differing from the grant
	// nodesListed is closed once nodes were first listed: services wait for
	// it, since a host-network backend is checked against the node IPs.
	nodesListed     chan struct{}
	nodesListedOnce sync.Once
	lastUpdate      time.Time
	lastProgress    time.Time // last kvstore.EventProgress on any watch
	version         uint64
	// lease is the lease the cluster's config key is bound to (zero: not
	// read yet, or to be read again); leaseLeft is how long it had left
	// when read at leaseRead.
	lease       kvstore.LeaseID
	leaseLeft   time.Duration
	leaseRead   time.Time
	snap        *ClusterState
	snapVersion uint64
}

func newCluster(ctx context.Context, w *Watcher, cfg clustermesh.ClusterConfig) *cluster {
	c := &cluster{
		w:          w,
		name:       cfg.Name,
		done:       make(chan struct{}),
		cfg:        cfg,
		nodes:      newTable[clustermesh.Node](),
		identities: newTable[clustermesh.Identity](),
		ips:        newIPTable(cfg.Name),
		services:   newTable[clustermesh.Service](),
		servicesV1: newTable[clustermesh.Service](),
		servicesV2: newTable[servicePart](),
		layouts:    make(map[string]clustermesh.Kind),
		strings:    make(map[string]string),
		markerSeen: make(map[clustermesh.Kind]bool),
		markers:    make(map[clustermesh.Kind][]byte),
		listed:     make(map[clustermesh.Kind]bool),

		nodesListed: make(chan struct{}),

		initialKinds: -1,
	}
	c.tables = map[clustermesh.Kind]table{
		clustermesh.KindNodes:      c.nodes,
		clustermesh.KindIdentities: c.identities,
		clustermesh.KindIPs:        c.ips,
		clustermesh.KindServices:   c.servicesV1,
		clustermesh.KindServicesV2: c.servicesV2,
	}
	c.entryGauges = make(map[clustermesh.Kind]prometheus.Gauge, len(clustermesh.Kinds))
	for _, k := range clustermesh.Kinds {
		c.entryGauges[k] = w.metrics.entries.WithLabelValues(string(cfg.Name), string(k))
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	return c
}

func (c *cluster) config() clustermesh.ClusterConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

// setClaims records the claims of the cluster's config that differ from its
// grant; each new set is counted as a rejection.
func (c *cluster) setClaims(claims []string) {
	c.mu.Lock()
	changed := !slices.Equal(c.claims, claims)
	c.claims = claims
	c.mu.Unlock()
	if !changed {
		return
	}
	for _, claim := range claims {
		c.reject("", fmt.Errorf("cluster config of %s ignored where it differs from the grant: %s", c.name, claim))
	}
}

func (c *cluster) setConfig(cfg clustermesh.ClusterConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg = cfg
	c.version++
	c.lease = 0 // a new config may hang on a new lease (a restarted operator)
}

// checkLease reads how long the cluster's lease has left. Failures keep
// what was read last: the time left keeps counting down from it.
func (c *cluster) checkLease(ctx context.Context) {
	c.mu.Lock()
	id := c.lease
	c.mu.Unlock()
	store := c.w.store
	if id == 0 {
		kv, err := store.Get(ctx, clustermesh.ClusterKey(c.name))
		if err != nil {
			return
		}
		if id = kv.Lease; id == 0 {
			return // not bound to a lease: it stays until deleted
		}
	}
	left, err := store.LeaseTTL(ctx, id)
	switch {
	case errors.Is(err, kvstore.ErrLeaseNotFound):
		left, id = 0, 0 // ended; its keys are going, or a new lease holds them
	case err != nil:
		return
	}
	c.mu.Lock()
	c.lease, c.leaseLeft, c.leaseRead = id, left, time.Now()
	c.mu.Unlock()
}

// run watches the cluster's sync markers and starts a kind's watch once its
// marker is seen. It returns when ctx is done or stop is called, after every
// watch goroutine exited.
func (c *cluster) run() {
	ctx := c.ctx
	defer close(c.done)
	defer c.wg.Wait()

	// Bound how many clusters do their initial lists at once: a cold start
	// against a large mesh would otherwise hold every cluster's list pages
	// and decoded entries in flight together.
	select {
	case c.w.syncSlots <- struct{}{}:
	case <-ctx.Done():
		return
	}
	var releaseOnce sync.Once
	c.releaseSlot = func() { releaseOnce.Do(func() { <-c.w.syncSlots }) }
	defer c.releaseSlot()
	// A cluster whose lists keep failing must not hold its slot forever
	// and starve the clusters queued behind it.
	slotTimer := time.AfterFunc(syncSlotTimeout, c.releaseSlot)
	defer slotTimer.Stop()

	started := map[clustermesh.Kind]bool{}
	// listing holds the kinds whose markers the current (re-)list of the
	// markers delivered, for Entries.
	listing := map[clustermesh.Kind]bool{}
	for ev := range c.w.store.Watch(ctx, clustermesh.SyncedPrefix(c.name)) {
		switch ev.Kind {
		case kvstore.EventUpsert:
			cfg := c.config()
			kind, marker, err := clustermesh.DecodeSyncMarker(&cfg, ev.Key, ev.Value)
			if err != nil {
				c.reject("", err)
				continue
			}
			c.mu.Lock()
			if !started[kind] {
				c.tables[kind].reserve(marker.Entries)
			}
			c.markerSeen[kind] = true
			c.markers[kind] = ev.Value
			listing[kind] = true
			relisted := c.listed[kind]
			c.connected = true
			c.mu.Unlock()
			if relisted {
				c.w.emitEntry(ev) // a marker rewritten after its kind was listed
			}
			if !started[kind] {
				started[kind] = true
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					if kind == clustermesh.KindServices || kind == clustermesh.KindServicesV2 {
						select {
						case <-c.nodesListed:
						case <-ctx.Done():
							return
						}
					}
					c.watchKind(ctx, kind)
				}()
			}
		case kvstore.EventListDone:
			c.mu.Lock()
			c.connected = true
			// The initial sync is over once the kinds whose markers exist
			// now are listed; a cluster still publishing gives its slot
			// back at once.
			c.initialKinds = len(started)
			done := c.initialKinds == 0 || c.listedCount() >= c.initialKinds
			c.mu.Unlock()
			if done {
				c.releaseSlot()
			}
			var kinds []string
			for _, k := range clustermesh.Kinds {
				if listing[k] {
					kinds = append(kinds, string(k))
				}
			}
			c.w.emitEntry(kvstore.Event{Kind: kvstore.EventListDone, Key: clustermesh.ClusterKey(c.name), Value: []byte(strings.Join(kinds, ","))})
		case kvstore.EventRestart:
			clear(listing)
		case kvstore.EventDelete:
			c.w.emitEntry(ev) // a marker gone: its kind is no longer published
		case kvstore.EventError:
			c.fail(ev.Err)
		case kvstore.EventProgress:
			c.progress()
		}
	}
}

// progress records that the store confirmed a watch of the cluster is live.
func (c *cluster) progress() {
	c.mu.Lock()
	c.lastProgress = time.Now()
	c.connected = true // the store heard from the server
	c.mu.Unlock()
}

// listedCount is how many kinds completed a list; c.mu must be held.
func (c *cluster) listedCount() int {
	n := 0
	for _, ok := range c.listed {
		if ok {
			n++
		}
	}
	return n
}

// stop cancels the cluster's watches and waits for run to return.
func (c *cluster) stop() {
	c.cancel()
	<-c.done
}

func (c *cluster) fail(err error) {
	c.mu.Lock()
	c.connected = false
	c.failures++
	c.lastErr = err.Error()
	c.mu.Unlock()
	c.w.metrics.failures.WithLabelValues(string(c.name)).Inc()
	c.w.log.Warn("remote cluster watch failing", "cluster", c.name, "err", err)
}

func (c *cluster) reject(kind clustermesh.Kind, err error) {
	c.mu.Lock()
	c.invalid++
	c.lastErr = err.Error()
	if len(c.rejected) == clustermesh.MaxRejectedShown {
		c.rejected = slices.Delete(c.rejected, 0, 1)
	}
	c.rejected = append(c.rejected, err.Error())
	c.mu.Unlock()
	c.w.metrics.invalid.WithLabelValues(string(c.name), string(kind)).Inc()
	c.w.log.Warn("rejected remote entry", "cluster", c.name, "err", err)
}

// decode validates an entry against the cluster's config. The cluster name
// in the record is replaced by the cluster's own string, so the hundreds of
// thousands of records a large mesh holds share one copy per cluster.
func (c *cluster) decode(kind clustermesh.Kind, key string, value []byte) (any, error) {
	cfg := c.config()
	switch kind {
	case clustermesh.KindNodes:
		n, err := clustermesh.DecodeNode(&cfg, key, value)
		n.Cluster = c.name
		return n, err
	case clustermesh.KindIdentities:
		id, err := clustermesh.DecodeIdentity(&cfg, key, value)
		id.Cluster = c.name
		return id, err
	case clustermesh.KindIPs:
		e, err := clustermesh.DecodeIPEntry(&cfg, key, value)
		e.Cluster = c.name
		return e, err
	case clustermesh.KindServicesV2:
		return c.decodeServicePart(&cfg, key, value)
	default:
		svc, err := clustermesh.DecodeServiceOnNodes(&cfg, c.isNodeIP, key, value)
		svc.Cluster = c.name
		return svc, err
	}
}

// isNodeIP reports whether ip is an IP of one of the cluster's nodes.
func (c *cluster) isNodeIP(ip netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	found := false
	c.nodes.each(func(n clustermesh.Node) {
		found = found || slices.Contains(n.IPs, ip)
	})
	return found
}

// watchKind lists then watches one kind of the cluster's records.
func (c *cluster) watchKind(ctx context.Context, kind clustermesh.Kind) {
	for ev := range c.w.store.Watch(ctx, clustermesh.KindPrefix(kind, c.name)) {
		switch ev.Kind {
		case kvstore.EventUpsert:
			rec, err := c.decode(kind, ev.Key, ev.Value)
			if err != nil {
				c.reject(kind, err)
				continue
			}
			c.upsert(kind, ev.Key, maphash.Bytes(c.w.seed, ev.Value), rec)
			c.w.emitEntry(ev)
		case kvstore.EventDelete:
			c.delete(kind, ev.Key)
			c.w.emitEntry(ev)
		case kvstore.EventRestart:
			c.mu.Lock()
			c.tables[kind].markStale()
			c.mu.Unlock()
		case kvstore.EventListDone:
			c.listDone(kind)
		case kvstore.EventError:
			c.fail(ev.Err)
		case kvstore.EventProgress:
			c.progress()
		}
	}
}

func (c *cluster) upsert(kind clustermesh.Kind, key string, h uint64, rec any) {
	now := time.Now()
	c.mu.Lock()
	c.connected = true
	switch r := rec.(type) {
	case clustermesh.Service:
		r.Backends = trimmed(r.Backends)
		c.internLocked(r.Backends)
		rec = r
	case servicePart:
		if r.chunk != nil {
			r.chunk.Backends = trimmed(r.chunk.Backends)
			c.internLocked(r.chunk.Backends)
		}
	}
	tkey := c.tableKey(kind, key)
	if !c.tables[kind].put(tkey, h, rec) {
		c.mu.Unlock()
		return // rewritten unchanged: nothing for consumers
	}
	if isServiceKind(kind) {
		c.refreshServiceAndUnlock(now, kind, tkey)
		return
	}
	c.version++
	c.lastUpdate = now
	n := c.tables[kind].len()
	c.mu.Unlock()
	c.entryGauges[kind].Set(float64(n))
	c.w.emit(Change{Type: Upsert, Cluster: c.name, Kind: kind, Key: key, Record: rec, Time: now})
}

// tableKey is what a table stores key under: the part after the kind's
// prefix, copied so the full key's memory is not kept alive by it.
func (c *cluster) tableKey(kind clustermesh.Kind, key string) string {
	return strings.Clone(strings.TrimPrefix(key, clustermesh.KindPrefix(kind, c.name)))
}

// fullKeys turns table keys back into store keys.
func (c *cluster) fullKeys(kind clustermesh.Kind, names []string) []string {
	prefix := clustermesh.KindPrefix(kind, c.name)
	for i, n := range names {
		names[i] = prefix + n
	}
	return names
}

// trimmed returns backends without spare capacity: decoders grow slices
// by doubling, and a large mesh holds hundreds of thousands of backends.
func trimmed(backends []clustermesh.Backend) []clustermesh.Backend {
	if cap(backends) > len(backends) {
		return append([]clustermesh.Backend(nil), backends...)
	}
	return backends
}

// internLocked makes backends share one copy of each node and zone name;
// c.mu must be held. It may reallocate the slice's array: the caller
// passes a slice header it owns.
func (c *cluster) internLocked(backends []clustermesh.Backend) {
	intern := func(s string) string {
		if v, ok := c.strings[s]; ok {
			return v
		}
		c.strings[s] = s
		return s
	}
	for i := range backends {
		backends[i].Node = intern(backends[i].Node)
		backends[i].Zone = intern(backends[i].Zone)
	}
}

func (c *cluster) delete(kind clustermesh.Kind, key string) {
	now := time.Now()
	c.mu.Lock()
	tkey := c.tableKey(kind, key)
	old, ok := c.tables[kind].remove(tkey)
	if !ok {
		c.mu.Unlock()
		return
	}
	if isServiceKind(kind) {
		c.refreshServiceAndUnlock(now, kind, tkey)
		return
	}
	c.version++
	c.lastUpdate = now
	n := c.tables[kind].len()
	c.mu.Unlock()
	c.entryGauges[kind].Set(float64(n))
	c.w.emit(Change{Type: Delete, Cluster: c.name, Kind: kind, Key: key, Record: old, Time: now})
}

// listDone deletes entries a re-list did not see again and updates sync
// state.
func (c *cluster) listDone(kind clustermesh.Kind) {
	c.mu.Lock()
	gone := c.fullKeys(kind, c.tables[kind].staleKeys())
	marker := c.markers[kind]
	c.mu.Unlock()
	for _, key := range gone {
		c.delete(kind, key)
		c.w.emitEntry(kvstore.Event{Kind: kvstore.EventDelete, Key: key})
	}
	c.w.emitEntry(kvstore.Event{Kind: kvstore.EventUpsert, Key: clustermesh.SyncedKey(c.name, kind), Value: marker})
	if kind == clustermesh.KindNodes {
		c.nodesListedOnce.Do(func() { close(c.nodesListed) })
	}
	c.mu.Lock()
	c.connected = true
	c.listed[kind] = true
	if c.initialKinds >= 0 && c.listedCount() >= c.initialKinds && c.releaseSlot != nil {
		defer c.releaseSlot()
	}
	becameSynced := false
	if !c.synced {
		if clustermesh.SyncedKinds(c.markerSeen, c.listed) {
			c.synced, becameSynced = true, true
			c.version++
		}
	}
	c.mu.Unlock()
	if becameSynced {
		c.w.log.Info("remote cluster synced", "cluster", c.name)
		c.w.emit(Change{Type: ClusterSynced, Cluster: c.name, Time: time.Now()})
	}
}

// drain deletes every entry, telling consumers, and returns the final
// status. The cluster's watches must be stopped.
func (c *cluster) drain() clustermesh.RemoteClusterStatus {
	for _, kind := range clustermesh.Kinds {
		if isServiceKind(kind) {
			continue
		}
		c.mu.Lock()
		keys := c.fullKeys(kind, c.tables[kind].keys())
		c.mu.Unlock()
		for _, key := range keys {
			c.delete(kind, key)
		}
	}
	c.drainServices()
	c.mu.Lock()
	c.synced = false
	c.mu.Unlock()
	return c.status()
}

func (c *cluster) status() clustermesh.RemoteClusterStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := clustermesh.RemoteClusterStatus{
		Name:        c.name,
		ID:          c.cfg.ID,
		Connected:   c.connected,
		Synced:      c.synced,
		SyncedKinds: make(map[clustermesh.Kind]bool, len(clustermesh.Kinds)),
		Entries:     make(map[clustermesh.Kind]int, len(clustermesh.Kinds)),
		LastUpdate:  c.lastUpdate,
		Failures:    c.failures,
		Invalid:     c.invalid,
		LastError:   c.lastErr,
		Rejected:    slices.Clone(c.rejected),

		LastProgress: c.lastProgress,
	}
	// Stale only where the store reports progress at all (the in-memory
	// store does not), and not while failing: that shows as disconnected.
	if !c.lastProgress.IsZero() && c.connected {
		st.Stale = time.Since(st.LastHeard()) > c.w.cfg.StaleAfter
	}
	for _, k := range clustermesh.Kinds {
		st.SyncedKinds[k] = c.markerSeen[k] && c.listed[k]
		st.Entries[k] = c.tables[k].len()
	}
	if !c.leaseRead.IsZero() {
		left := max(c.leaseLeft-time.Since(c.leaseRead), 0).Seconds()
		st.LeaseRemaining = &left
	}
	st.Entries[clustermesh.KindServices] = c.services.len()
	return st
}

// snapshot returns an immutable copy of the cluster's state, rebuilt only
// if something changed since the last one.
func (c *cluster) snapshot() *ClusterState {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snap != nil && c.snapVersion == c.version {
		return c.snap
	}
	s := &ClusterState{
		Config:     c.cfg,
		Synced:     c.synced,
		Nodes:      make(map[string]clustermesh.Node, c.nodes.len()),
		Identities: make(map[clustermesh.NumericIdentity]clustermesh.Identity, c.identities.len()),
		IPs:        make(map[netip.Prefix]clustermesh.IPEntry, c.ips.len()),
		Services:   make(map[string]clustermesh.Service, c.services.len()),
	}
	c.nodes.each(func(n clustermesh.Node) { s.Nodes[n.Name] = n })
	c.identities.each(func(id clustermesh.Identity) { s.Identities[id.ID] = id })
	c.ips.each(func(ip clustermesh.IPEntry) { s.IPs[ip.Prefix] = ip })
	c.services.each(func(svc clustermesh.Service) { s.Services[svc.NamespacedName()] = svc })
	c.snap, c.snapVersion = s, c.version
	return s
}
