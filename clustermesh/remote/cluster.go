package remote

import (
	"context"
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
)

// entry is one applied record and the hash of the value it came from.
type entry struct {
	hash  uint64
	rec   any
	stale bool
}

// cluster mirrors one remote cluster. Its watch goroutines apply events
// under mu; snapshots are rebuilt lazily when version moved.
type cluster struct {
	w      *Watcher
	name   clustermesh.ClusterName
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}  // closed when run returned
	wg     sync.WaitGroup // watch goroutines started by run

	mu          sync.Mutex
	cfg         clustermesh.ClusterConfig
	entries     map[clustermesh.Kind]map[string]*entry
	markerSeen  map[clustermesh.Kind]bool
	listed      map[clustermesh.Kind]bool
	synced      bool
	connected   bool
	failures    int
	invalid     int
	lastErr     string
	lastUpdate  time.Time
	version     uint64
	snap        *ClusterState
	snapVersion uint64
}

func newCluster(ctx context.Context, w *Watcher, cfg clustermesh.ClusterConfig) *cluster {
	c := &cluster{
		w:          w,
		name:       cfg.Name,
		done:       make(chan struct{}),
		cfg:        cfg,
		entries:    make(map[clustermesh.Kind]map[string]*entry, len(clustermesh.Kinds)),
		markerSeen: make(map[clustermesh.Kind]bool),
		listed:     make(map[clustermesh.Kind]bool),
	}
	for _, k := range clustermesh.Kinds {
		c.entries[k] = make(map[string]*entry)
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	return c
}

func (c *cluster) config() clustermesh.ClusterConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

func (c *cluster) setConfig(cfg clustermesh.ClusterConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg = cfg
	c.version++
}

// run watches the cluster's sync markers and starts a kind's watch once its
// marker is seen. It returns when ctx is done or stop is called, after every
// watch goroutine exited.
func (c *cluster) run() {
	ctx := c.ctx
	defer close(c.done)
	defer c.wg.Wait()

	started := map[clustermesh.Kind]bool{}
	for ev := range c.w.store.Watch(ctx, clustermesh.SyncedPrefix(c.name)) {
		switch ev.Kind {
		case kvstore.EventUpsert:
			cfg := c.config()
			kind, _, err := clustermesh.DecodeSyncMarker(&cfg, ev.Key, ev.Value)
			if err != nil {
				c.reject("", err)
				continue
			}
			c.mu.Lock()
			c.markerSeen[kind] = true
			c.connected = true
			c.mu.Unlock()
			if !started[kind] {
				started[kind] = true
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					c.watchKind(ctx, kind)
				}()
			}
		case kvstore.EventListDone:
			c.mu.Lock()
			c.connected = true
			c.mu.Unlock()
		case kvstore.EventError:
			c.fail(ev.Err)
		}
	}
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
	c.mu.Unlock()
	c.w.metrics.invalid.WithLabelValues(string(c.name), string(kind)).Inc()
	c.w.log.Warn("rejected remote entry", "cluster", c.name, "err", err)
}

func (c *cluster) decode(kind clustermesh.Kind, key string, value []byte) (any, error) {
	cfg := c.config()
	switch kind {
	case clustermesh.KindNodes:
		return clustermesh.DecodeNode(&cfg, key, value)
	case clustermesh.KindIdentities:
		return clustermesh.DecodeIdentity(&cfg, key, value)
	case clustermesh.KindIPs:
		return clustermesh.DecodeIPEntry(&cfg, key, value)
	default:
		return clustermesh.DecodeService(&cfg, key, value)
	}
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
		case kvstore.EventDelete:
			c.delete(kind, ev.Key)
		case kvstore.EventRestart:
			c.mu.Lock()
			for _, e := range c.entries[kind] {
				e.stale = true
			}
			c.mu.Unlock()
		case kvstore.EventListDone:
			c.listDone(kind)
		case kvstore.EventError:
			c.fail(ev.Err)
		}
	}
}

func (c *cluster) upsert(kind clustermesh.Kind, key string, h uint64, rec any) {
	now := time.Now()
	c.mu.Lock()
	c.connected = true
	e, ok := c.entries[kind][key]
	if ok && e.hash == h {
		e.stale = false
		c.mu.Unlock()
		return // rewritten unchanged: nothing for consumers
	}
	c.entries[kind][key] = &entry{hash: h, rec: rec}
	c.version++
	c.lastUpdate = now
	n := len(c.entries[kind])
	c.mu.Unlock()
	c.w.metrics.entries.WithLabelValues(string(c.name), string(kind)).Set(float64(n))
	c.w.emit(Change{Type: Upsert, Cluster: c.name, Kind: kind, Key: key, Record: rec, Time: now})
}

func (c *cluster) delete(kind clustermesh.Kind, key string) {
	now := time.Now()
	c.mu.Lock()
	e, ok := c.entries[kind][key]
	if !ok {
		c.mu.Unlock()
		return
	}
	delete(c.entries[kind], key)
	c.version++
	c.lastUpdate = now
	n := len(c.entries[kind])
	c.mu.Unlock()
	c.w.metrics.entries.WithLabelValues(string(c.name), string(kind)).Set(float64(n))
	c.w.emit(Change{Type: Delete, Cluster: c.name, Kind: kind, Key: key, Record: e.rec, Time: now})
}

// listDone deletes entries a re-list did not see again and updates sync
// state.
func (c *cluster) listDone(kind clustermesh.Kind) {
	c.mu.Lock()
	var gone []string
	for key, e := range c.entries[kind] {
		if e.stale {
			gone = append(gone, key)
		}
	}
	c.mu.Unlock()
	for _, key := range gone {
		c.delete(kind, key)
	}
	c.mu.Lock()
	c.connected = true
	c.listed[kind] = true
	becameSynced := false
	if !c.synced {
		all := true
		for _, k := range clustermesh.Kinds {
			all = all && c.markerSeen[k] && c.listed[k]
		}
		if all {
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
		c.mu.Lock()
		keys := make([]string, 0, len(c.entries[kind]))
		for key := range c.entries[kind] {
			keys = append(keys, key)
		}
		c.mu.Unlock()
		for _, key := range keys {
			c.delete(kind, key)
		}
	}
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
	}
	for _, k := range clustermesh.Kinds {
		st.SyncedKinds[k] = c.markerSeen[k] && c.listed[k]
		st.Entries[k] = len(c.entries[k])
	}
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
		Nodes:      make(map[string]clustermesh.Node, len(c.entries[clustermesh.KindNodes])),
		Identities: make(map[clustermesh.NumericIdentity]clustermesh.Identity, len(c.entries[clustermesh.KindIdentities])),
		IPs:        make(map[netip.Prefix]clustermesh.IPEntry, len(c.entries[clustermesh.KindIPs])),
		Services:   make(map[string]clustermesh.Service, len(c.entries[clustermesh.KindServices])),
	}
	for _, e := range c.entries[clustermesh.KindNodes] {
		n := e.rec.(clustermesh.Node)
		s.Nodes[n.Name] = n
	}
	for _, e := range c.entries[clustermesh.KindIdentities] {
		id := e.rec.(clustermesh.Identity)
		s.Identities[id.ID] = id
	}
	for _, e := range c.entries[clustermesh.KindIPs] {
		ip := e.rec.(clustermesh.IPEntry)
		s.IPs[ip.Prefix] = ip
	}
	for _, e := range c.entries[clustermesh.KindServices] {
		svc := e.rec.(clustermesh.Service)
		s.Services[svc.NamespacedName()] = svc
	}
	c.snap, c.snapVersion = s, c.version
	return s
}
