package remote

import (
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
)

// DefaultGoneRetention is how long a departed cluster stays in Status.
const DefaultGoneRetention = 10 * time.Minute

// Config configures a Watcher.
type Config struct {
	// Self is the local cluster, which the Watcher ignores. Empty watches
	// every cluster (a consumer outside the mesh, such as `braid status`).
	Self clustermesh.ClusterName
	// GoneRetention is how long a departed cluster stays in Status; zero
	// means DefaultGoneRetention.
	GoneRetention time.Duration
	// ConcurrentSyncs bounds how many clusters list their state at once
	// during their initial sync; zero means DefaultConcurrentSyncs.
	ConcurrentSyncs int
}

// DefaultConcurrentSyncs is Config.ConcurrentSyncs' default: enough to keep
// etcd and the decoders busy, few enough that a cold start against hundreds
// of clusters does not hold all their data in flight at once.
const DefaultConcurrentSyncs = 8

// Watcher mirrors every remote cluster. See the package doc.
type Watcher struct {
	cfg     Config
	store   kvstore.Store
	log     *slog.Logger
	metrics *metrics
	seed    maphash.Seed
	// syncSlots holds a token per cluster doing its initial sync.
	syncSlots chan struct{}

	mu       sync.Mutex
	clusters map[clustermesh.ClusterName]*cluster
	gone     map[clustermesh.ClusterName]clustermesh.RemoteClusterStatus
	invalid  int // rejected cluster configs
	lastErr  string

	subsMu sync.Mutex
	subs   map[*subscription]struct{}
}

// New builds a Watcher. It starts nothing.
func New(cfg Config, store kvstore.Store, log *slog.Logger, reg prometheus.Registerer) (*Watcher, error) {
	if cfg.GoneRetention == 0 {
		cfg.GoneRetention = DefaultGoneRetention
	}
	if cfg.ConcurrentSyncs <= 0 {
		cfg.ConcurrentSyncs = DefaultConcurrentSyncs
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("new remote watcher: %w", err)
	}
	return &Watcher{
		cfg:       cfg,
		store:     store,
		log:       log,
		metrics:   m,
		seed:      maphash.MakeSeed(),
		syncSlots: make(chan struct{}, cfg.ConcurrentSyncs),
		clusters:  make(map[clustermesh.ClusterName]*cluster),
		gone:      make(map[clustermesh.ClusterName]clustermesh.RemoteClusterStatus),
		subs:      make(map[*subscription]struct{}),
	}, nil
}

// Run follows the mesh until ctx is done, then stops every cluster's
// watches and waits for them. It returns nil on cancellation.
func (w *Watcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer func() {
		w.mu.Lock()
		cs := slices.Collect(maps.Values(w.clusters))
		w.mu.Unlock()
		for _, c := range cs {
			c.stop()
		}
		wg.Wait()
	}()

	stale := map[clustermesh.ClusterName]bool{}
	for ev := range w.store.Watch(ctx, clustermesh.ClustersPrefix) {
		switch ev.Kind {
		case kvstore.EventUpsert:
			cfg, err := clustermesh.DecodeClusterConfig(ev.Key, ev.Value)
			if err != nil {
				w.mu.Lock()
				w.invalid++
				w.lastErr = err.Error()
				w.mu.Unlock()
				w.metrics.invalidConfigs.Inc()
				w.log.Warn("rejected cluster config", "err", err)
				continue
			}
			delete(stale, cfg.Name)
			if cfg.Name == w.cfg.Self {
				continue
			}
			w.upsertCluster(ctx, &wg, cfg)
		case kvstore.EventDelete:
			pk, err := clustermesh.ParseKey(ev.Key)
			if err == nil && pk.Config {
				w.removeCluster(pk.Cluster)
			}
		case kvstore.EventRestart:
			w.mu.Lock()
			for name := range w.clusters {
				stale[name] = true
			}
			w.mu.Unlock()
		case kvstore.EventListDone:
			for name := range stale {
				w.removeCluster(name)
			}
			clear(stale)
		case kvstore.EventError:
			w.mu.Lock()
			w.lastErr = ev.Err.Error()
			w.mu.Unlock()
			w.log.Warn("cluster config watch failing", "err", ev.Err)
		}
	}
	return nil
}

// upsertCluster starts watching a new cluster, or applies a config change.
// A change of ID or CIDRs invalidates what was validated against the old
// config, so the cluster is drained and watched again.
func (w *Watcher) upsertCluster(ctx context.Context, wg *sync.WaitGroup, cfg clustermesh.ClusterConfig) {
	w.mu.Lock()
	c, ok := w.clusters[cfg.Name]
	w.mu.Unlock()
	if ok {
		old := c.config()
		if old.ID == cfg.ID && slices.Equal(old.PodCIDRs, cfg.PodCIDRs) && slices.Equal(old.ServiceCIDRs, cfg.ServiceCIDRs) {
			c.setConfig(cfg)
			return
		}
		w.log.Info("cluster config changed; re-syncing it", "cluster", cfg.Name)
		w.removeCluster(cfg.Name)
	}
	c = newCluster(ctx, w, cfg)
	w.mu.Lock()
	w.clusters[cfg.Name] = c
	delete(w.gone, cfg.Name)
	w.mu.Unlock()
	w.log.Info("remote cluster joined", "cluster", cfg.Name, "id", cfg.ID)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.run()
	}()
}

// removeCluster stops and drains a cluster.
func (w *Watcher) removeCluster(name clustermesh.ClusterName) {
	w.mu.Lock()
	c, ok := w.clusters[name]
	delete(w.clusters, name)
	w.mu.Unlock()
	if !ok {
		return
	}
	c.stop()
	st := c.drain()
	st.Gone, st.GoneAt, st.Connected = true, time.Now(), false
	w.mu.Lock()
	w.gone[name] = st
	w.mu.Unlock()
	w.metrics.forget(name)
	w.emit(Change{Type: ClusterGone, Cluster: name, Time: st.GoneAt})
	w.log.Info("remote cluster gone; drained", "cluster", name)
}

// Snapshot returns the current state of every remote cluster. Clusters that
// did not change since the last call share their previous ClusterState.
func (w *Watcher) Snapshot() *Snapshot {
	w.mu.Lock()
	cs := slices.Collect(maps.Values(w.clusters))
	w.mu.Unlock()
	s := &Snapshot{Clusters: make(map[clustermesh.ClusterName]*ClusterState, len(cs))}
	for _, c := range cs {
		s.Clusters[c.name] = c.snapshot()
	}
	return s
}

// Status returns every known cluster's status, departed ones included for
// GoneRetention, sorted by name.
func (w *Watcher) Status() []clustermesh.RemoteClusterStatus {
	w.mu.Lock()
	cs := slices.Collect(maps.Values(w.clusters))
	var out []clustermesh.RemoteClusterStatus
	for name, st := range w.gone {
		if time.Since(st.GoneAt) > w.cfg.GoneRetention {
			delete(w.gone, name)
			continue
		}
		out = append(out, st)
	}
	w.mu.Unlock()
	for _, c := range cs {
		out = append(out, c.status())
	}
	slices.SortFunc(out, func(a, b clustermesh.RemoteClusterStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// InvalidConfigs returns how many cluster configs were rejected and the
// last error of the cluster config watch.
func (w *Watcher) InvalidConfigs() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.invalid, w.lastErr
}
