package status

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
)

// Defaults of MeshConfig.
const (
	DefaultMeshCoalesce = 100 * time.Millisecond
	DefaultMeshRefresh  = time.Second
	maxMeshErrors       = 20
)

// MeshConfig configures a MeshWatcher.
type MeshConfig struct {
	// Source and View name who serves the document (see Mesh).
	Source string
	View   clustermesh.ClusterName
	// Coalesce is how long changes gather before the document is rebuilt;
	// zero means DefaultMeshCoalesce. Refresh is how often it is rebuilt
	// without changes, so that ages advance; zero means
	// DefaultMeshRefresh.
	Coalesce, Refresh time.Duration
	// Logger: nil discards.
	Logger *slog.Logger
}

// MeshWatcher keeps a Mesh document current from one watch of everything
// under clustermesh.Root. Mesh and Subscribe never block on the store. Run
// it once; it returns when ctx is done.
type MeshWatcher struct {
	cfg   MeshConfig
	store kvstore.Store
	log   *slog.Logger

	mu      sync.Mutex
	state   meshState
	ready   bool
	doc     Mesh
	errs    []MeshError
	seenErr map[string]bool
	subs    map[chan struct{}]struct{}
	dirty   chan struct{}
}

// NewMeshWatcher returns a watcher over store; it starts nothing.
func NewMeshWatcher(cfg MeshConfig, store kvstore.Store) *MeshWatcher {
	if cfg.Coalesce == 0 {
		cfg.Coalesce = DefaultMeshCoalesce
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = DefaultMeshRefresh
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &MeshWatcher{
		cfg: cfg, store: store, log: log,
		state:   meshState{configs: map[clustermesh.ClusterName]clustermesh.ClusterConfig{}, raw: map[string][]byte{}, lastUpdate: map[clustermesh.ClusterName]time.Time{}},
		seenErr: map[string]bool{},
		subs:    map[chan struct{}]struct{}{},
		dirty:   make(chan struct{}, 1),
	}
	w.doc = Mesh{APIVersion: MeshAPIVersion, Source: cfg.Source, View: cfg.View, Time: time.Now(), Clusters: []MeshCluster{}, Services: []GlobalService{}, Errors: []MeshError{}}
	return w
}

// Mesh returns the current document. The caller must not modify it.
func (w *MeshWatcher) Mesh() Mesh {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.doc
}

// Subscribe returns a channel that receives a value whenever the document
// was rebuilt (a pending one is not repeated), and a function ending the
// subscription.
func (w *MeshWatcher) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	w.subs[ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.subs, ch)
		w.mu.Unlock()
	}
}

// Run watches the store and rebuilds the document until ctx is done.
func (w *MeshWatcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.rebuildLoop(ctx)
	}()
	for ev := range w.store.Watch(ctx, clustermesh.Root) {
		w.apply(ev)
	}
	return nil
}

func (w *MeshWatcher) apply(ev kvstore.Event) {
	now := time.Now()
	w.mu.Lock()
	st := &w.state
	switch ev.Kind {
	case kvstore.EventUpsert, kvstore.EventDelete:
		if strings.HasPrefix(ev.Key, clustermesh.GrantsPrefix) {
			break // the broker's grants: consumers check configs against them
		}
		cluster := clusterOfKey(ev.Key)
		st.lastUpdate[cluster] = now
		if strings.HasPrefix(ev.Key, clustermesh.ClustersPrefix) {
			if ev.Kind == kvstore.EventDelete {
				delete(st.configs, clustermesh.ClusterName(strings.TrimPrefix(ev.Key, clustermesh.ClustersPrefix)))
				break
			}
			cfg, err := clustermesh.DecodeClusterConfig(ev.Key, ev.Value)
			if err != nil {
				w.recordLocked(cluster, ev.Key, err)
				break
			}
			st.configs[cfg.Name] = cfg
			break
		}
		if ev.Kind == kvstore.EventDelete {
			delete(st.raw, ev.Key)
		} else {
			st.raw[ev.Key] = ev.Value
		}
	case kvstore.EventRestart:
		// A re-list follows; start over from it.
		st.configs = map[clustermesh.ClusterName]clustermesh.ClusterConfig{}
		st.raw = map[string][]byte{}
		w.ready = false
	case kvstore.EventListDone:
		w.ready = true
	case kvstore.EventError:
		w.recordLocked("", "", ev.Err)
	}
	w.mu.Unlock()
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

func (w *MeshWatcher) recordLocked(cluster clustermesh.ClusterName, key string, err error) {
	msg := err.Error()
	if w.seenErr[key+"\x00"+msg] {
		return
	}
	w.seenErr[key+"\x00"+msg] = true
	if len(w.seenErr) > 4*maxMeshErrors {
		w.seenErr = map[string]bool{key + "\x00" + msg: true}
	}
	w.errs = append([]MeshError{{Time: time.Now(), Cluster: cluster, Message: msg}}, w.errs...)
	if len(w.errs) > maxMeshErrors {
		w.errs = w.errs[:maxMeshErrors]
	}
	w.log.Warn("mesh entry rejected", "cluster", cluster, "err", msg)
}

func (w *MeshWatcher) rebuildLoop(ctx context.Context) {
	refresh := time.NewTicker(w.cfg.Refresh)
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
		case <-w.dirty:
			// Let a burst of changes gather.
			t := time.NewTimer(w.cfg.Coalesce)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		w.rebuild()
	}
}

func (w *MeshWatcher) rebuild() {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	clusters, services := w.state.build(now, func(c clustermesh.ClusterName, key string, err error) { w.recordLocked(c, key, err) })
	w.doc = Mesh{
		APIVersion: MeshAPIVersion, Source: w.cfg.Source, View: w.cfg.View, Time: now, Ready: w.ready,
		Clusters: clusters, Services: services, Errors: append([]MeshError{}, w.errs...),
	}
	for ch := range w.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
