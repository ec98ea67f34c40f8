package remote

import (
	"cmp"
	"context"
	"errors"
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
	// StaleAfter is how long a cluster whose watches reported progress
	// (kvstore.EventProgress) may go without progress or a change before
	// it is shown stale; zero means DefaultStaleAfter. It must be several
	// times the store's progress interval.
	StaleAfter time.Duration
	// LeaseCheckInterval is how often the Watcher reads how long each
	// cluster's lease (the one its config key is bound to) has left, shown
	// as RemoteClusterStatus.LeaseRemaining: a cluster whose operator
	// stopped leaves when it runs out. Zero: not read (each read is a
	// request to the broker per cluster; operators read, agents need not).
	LeaseCheckInterval time.Duration
	// UngrantedWarnAfter is how long a cluster with a config may be
	// without a valid grant before the Watcher logs it; zero means
	// DefaultUngrantedWarnAfter. Configs and grants come from two
	// watches, so one can arrive before the other (a relay's mirror writes
	// both in one transaction, and revokes both at once when the cluster
	// leaves): a cluster ignored only that long is no news.
	UngrantedWarnAfter time.Duration
}

// DefaultUngrantedWarnAfter is Config.UngrantedWarnAfter's default.
const DefaultUngrantedWarnAfter = 2 * time.Second

// DefaultLeaseCheckInterval is the LeaseCheckInterval operators use: the
// lease TTLs are tens of seconds, and etcd counts them in whole seconds.
const DefaultLeaseCheckInterval = 2 * time.Second

// DefaultStaleAfter is Config.StaleAfter's default: six of the broker
// connection's progress intervals (join.ProgressInterval, 5 s).
const DefaultStaleAfter = 30 * time.Second

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
	// ungranted holds, by name, why a cluster with a config is ignored,
	// and since when.
	ungranted    map[clustermesh.ClusterName]ungrantedNote
	broker       BrokerStatus
	selfGranted  bool
	grantsListed bool

	subsMu    sync.Mutex
	subs      map[*subscription]struct{}
	notifiers map[*notifier]struct{}
	taps      map[*tap]struct{}

	// tapped is what Entries last announced of each cluster; only Run's
	// goroutine uses it.
	tapped map[clustermesh.ClusterName]tapMeta
}

// New builds a Watcher. It starts nothing.
func New(cfg Config, store kvstore.Store, log *slog.Logger, reg prometheus.Registerer) (*Watcher, error) {
	if cfg.GoneRetention == 0 {
		cfg.GoneRetention = DefaultGoneRetention
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	if cfg.ConcurrentSyncs <= 0 {
		cfg.ConcurrentSyncs = DefaultConcurrentSyncs
	}
	if cfg.UngrantedWarnAfter <= 0 {
		cfg.UngrantedWarnAfter = DefaultUngrantedWarnAfter
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
		ungranted: make(map[clustermesh.ClusterName]ungrantedNote),
		subs:      make(map[*subscription]struct{}),
		notifiers: make(map[*notifier]struct{}),
		taps:      make(map[*tap]struct{}),
		tapped:    make(map[clustermesh.ClusterName]tapMeta),
	}, nil
}

// Run follows the mesh until ctx is done, then stops every cluster's
// watches and waits for them. It returns nil on cancellation.
//
// A cluster is watched once it has both a config (it registered) and a
// grant from the broker; its entries are checked against the grant. A
// cluster with a config but no grant, or whose grant conflicts with an
// older one, is ignored and shown with the reason.
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

	if w.cfg.LeaseCheckInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.checkLeases(ctx)
		}()
	}
	m := &meshState{
		claimed:    map[clustermesh.ClusterName]clustermesh.ClusterConfig{},
		stale:      map[clustermesh.ClusterName]bool{},
		rawConfigs: map[clustermesh.ClusterName]string{},
		rawGrants:  map[clustermesh.ClusterName]string{},
	}
	configs := w.store.Watch(ctx, clustermesh.ClustersPrefix)
	grants := w.store.Watch(ctx, clustermesh.GrantsPrefix)
	for configs != nil || grants != nil {
		select {
		case ev, ok := <-configs:
			if !ok {
				configs = nil
				continue
			}
			w.configEvent(ctx, &wg, m, ev)
		case ev, ok := <-grants:
			if !ok {
				grants = nil
				continue
			}
			w.grantEvent(ctx, &wg, m, ev)
		}
	}
	return nil
}

// meshState is what Run knows of the mesh; only Run's goroutine uses it.
type meshState struct {
	claimed map[clustermesh.ClusterName]clustermesh.ClusterConfig
	stale   map[clustermesh.ClusterName]bool
	// grants are the grants honoured, conflicts the ones ignored; both
	// valid once grantsListed.
	grants       map[clustermesh.ClusterName]clustermesh.Grant
	conflicts    map[clustermesh.ClusterName]error
	grantsListed bool
	// grantsBehind says the last read of the grants failed: the next
	// event of the grant watch, a progress notification included, reads
	// them again.
	grantsBehind bool
	// rawConfigs and rawGrants are the values the claims and grants were
	// decoded from, for Entries.
	rawConfigs, rawGrants map[clustermesh.ClusterName]string
}

func (w *Watcher) configEvent(ctx context.Context, wg *sync.WaitGroup, m *meshState, ev kvstore.Event) {
	w.heard(ev)
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
			return
		}
		delete(m.stale, cfg.Name)
		m.claimed[cfg.Name] = cfg
		m.rawConfigs[cfg.Name] = string(ev.Value)
		w.reconcile(ctx, wg, m, cfg.Name)
	case kvstore.EventDelete:
		pk, err := clustermesh.ParseKey(ev.Key)
		if err == nil && pk.Config {
			delete(m.claimed, pk.Cluster)
			delete(m.rawConfigs, pk.Cluster)
			w.reconcile(ctx, wg, m, pk.Cluster)
		}
	case kvstore.EventRestart:
		for name := range m.claimed {
			m.stale[name] = true
		}
	case kvstore.EventListDone:
		for name := range m.stale {
			delete(m.claimed, name)
			delete(m.rawConfigs, name)
			w.reconcile(ctx, wg, m, name)
		}
		clear(m.stale)
		w.clearError()
		w.mu.Lock()
		w.broker.ConfigsListed = true
		w.mu.Unlock()
		if _, read := w.SelfGranted(); read {
			w.emitEntry(kvstore.Event{Kind: kvstore.EventListDone})
		}
	case kvstore.EventError:
		w.setError(ev.Err)
		w.log.Warn("cluster config watch failing", "err", ev.Err)
	}
}

// grantEvent re-reads every grant after the initial list and on each
// change: resolving conflicts needs their create revisions, and grants are
// few and rarely change. A progress notification changes nothing, so it
// reads them only when the last read failed.
//
// The read is bounded by StaleAfter: Run's loop waits for it, and a broker
// that went away during an unbounded read would hold the loop, and with it
// every later watch error, for as long as the broker stays away, showing
// it reachable all along. A failed read counts as a failure of the watch.
func (w *Watcher) grantEvent(ctx context.Context, wg *sync.WaitGroup, m *meshState, ev kvstore.Event) {
	w.heard(ev)
	switch ev.Kind {
	case kvstore.EventError:
		w.setError(ev.Err)
		w.log.Warn("grant watch failing", "err", ev.Err)
		return
	case kvstore.EventListDone:
		m.grantsListed = true
	case kvstore.EventRestart:
		return
	case kvstore.EventProgress:
		if !m.grantsBehind {
			return
		}
	}
	if !m.grantsListed {
		return
	}
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, w.cfg.StaleAfter)
	kvs, _, err := w.store.List(lctx, clustermesh.GrantsPrefix)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			m.grantsBehind = true
			err = fmt.Errorf("list grants: %w", err)
			w.failing(start, err)
			w.setError(err)
			w.log.Warn("reading grants failed; reading them again on the next grant event", "err", err)
		}
		return
	}
	m.grantsBehind = false
	var all []clustermesh.StoredGrant
	clear(m.rawGrants)
	for _, kv := range kvs {
		g, err := clustermesh.DecodeGrant(kv.Key, kv.Value)
		if err != nil {
			w.mu.Lock()
			w.invalid++
			w.lastErr = err.Error()
			w.mu.Unlock()
			w.metrics.invalidConfigs.Inc()
			continue
		}
		all = append(all, clustermesh.StoredGrant{Grant: g, CreateRevision: kv.CreateRevision})
		m.rawGrants[g.Name] = string(kv.Value)
	}
	ok, conflicts := clustermesh.ResolveGrants(all)
	names := map[clustermesh.ClusterName]bool{}
	for n := range m.grants {
		names[n] = true
	}
	for n := range ok {
		names[n] = true
	}
	for n := range m.claimed {
		names[n] = true
	}
	m.grants, m.conflicts = ok, conflicts
	w.mu.Lock()
	w.selfGranted = ok[w.cfg.Self].Name != ""
	w.grantsListed = true
	w.mu.Unlock()
	for n := range names {
		w.reconcile(ctx, wg, m, n)
	}
	if w.Broker().ConfigsListed {
		// Every cluster with a config and a grant is announced now.
		w.emitEntry(kvstore.Event{Kind: kvstore.EventListDone})
	}
}

// reconcile makes the watch of cluster name match its config and grant.
func (w *Watcher) reconcile(ctx context.Context, wg *sync.WaitGroup, m *meshState, name clustermesh.ClusterName) {
	if name == w.cfg.Self {
		return
	}
	cfg, claimed := m.claimed[name]
	if !claimed {
		w.setUngranted(name, "")
		w.removeCluster(name)
		return
	}
	if !m.grantsListed {
		return
	}
	g, granted := m.grants[name]
	if !granted {
		reason := "no grant from the broker: entries are ignored until `braid broker add-cluster` grants it an ID and CIDRs"
		if err := m.conflicts[name]; err != nil {
			reason = err.Error()
		}
		w.removeCluster(name)
		w.setUngranted(name, reason)
		return
	}
	w.setUngranted(name, "")
	owner, claims := g.Owner(cfg)
	c := w.upsertCluster(ctx, wg, owner, func() { w.announce(m, name) })
	c.setClaims(claims)
}

// BrokerStatus is how the Watcher's own watches of the mesh (cluster
// configs and grants) fare: whether the broker answers.
type BrokerStatus struct {
	// LastHeard is when either watch last delivered anything but an error
	// (an entry, a list, a progress notification).
	LastHeard time.Time
	// ProgressSeen says the store confirmed progress at least once: a
	// store that does (etcd with a progress interval) is expected to keep
	// doing so, and silence past a bound means the broker is unreachable.
	ProgressSeen bool
	// FailingSince is when the watches, or a read of the grants, began
	// failing (zero while they work); LastError is the latest failure.
	FailingSince time.Time
	LastError    string
	// Refused says the latest failure was the broker refusing this
	// cluster's credentials (kvstore.ErrPermissionDenied): it was removed.
	Refused bool
	// ConfigsListed and GrantsListed say both watches completed a list:
	// only then does a cluster missing from the mesh mean it is not
	// registered.
	ConfigsListed, GrantsListed bool
}

// Broker returns how the Watcher's watches of the mesh fare.
func (w *Watcher) Broker() BrokerStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.broker
	b.GrantsListed = w.grantsListed
	return b
}

// heard records what a mesh watch's event says about the broker.
func (w *Watcher) heard(ev kvstore.Event) {
	if ev.Kind == kvstore.EventError {
		w.failing(time.Now(), ev.Err)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	b := &w.broker
	b.LastHeard = time.Now()
	b.ProgressSeen = b.ProgressSeen || ev.Kind == kvstore.EventProgress
	b.FailingSince, b.LastError, b.Refused = time.Time{}, "", false
}

// failing records a failed call to the broker, begun at since.
func (w *Watcher) failing(since time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := &w.broker
	if b.FailingSince.IsZero() {
		b.FailingSince = since
	}
	b.LastError = err.Error()
	b.Refused = errors.Is(err, kvstore.ErrPermissionDenied)
}

// setUngranted records (reason not empty) or forgets why a cluster with a
// config is ignored.
// A new reason is logged once it has held for UngrantedWarnAfter.
func (w *Watcher) setUngranted(name clustermesh.ClusterName, reason string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if reason == "" {
		delete(w.ungranted, name)
		return
	}
	if w.ungranted[name].reason == reason {
		return
	}
	note := ungrantedNote{reason: reason, since: time.Now()}
	w.ungranted[name] = note
	time.AfterFunc(w.cfg.UngrantedWarnAfter, func() { w.warnUngranted(name, note) })
}

// ungrantedNote is why a cluster with a config is ignored, and since when.
type ungrantedNote struct {
	reason string
	since  time.Time
}

// warnUngranted logs that name is ignored if it still is, for the reason
// noted then.
func (w *Watcher) warnUngranted(name clustermesh.ClusterName, note ungrantedNote) {
	w.mu.Lock()
	still := w.ungranted[name] == note
	w.mu.Unlock()
	if still {
		w.log.Warn("ignoring cluster", "cluster", name, "reason", note.reason, "for", time.Since(note.since).Round(time.Millisecond))
	}
}

func (w *Watcher) setError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastErr = err.Error()
}

// clearError forgets the last watch error once the watch works again.
func (w *Watcher) clearError() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastErr = ""
}

// SelfGranted reports whether the broker's grant for Config.Self exists,
// and whether the grants have been listed at all yet.
func (w *Watcher) SelfGranted() (granted, known bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.selfGranted, w.grantsListed
}

// upsertCluster starts watching a new cluster, or applies a config change.
// A change of ID or CIDRs invalidates what was validated against the old
// config, so the cluster is drained and watched again. announce runs once
// the old watch is gone and before a new one starts.
func (w *Watcher) upsertCluster(ctx context.Context, wg *sync.WaitGroup, cfg clustermesh.ClusterConfig, announce func()) *cluster {
	w.mu.Lock()
	c, ok := w.clusters[cfg.Name]
	w.mu.Unlock()
	if ok {
		old := c.config()
		if old.ID == cfg.ID && slices.Equal(old.PodCIDRs, cfg.PodCIDRs) && slices.Equal(old.ServiceCIDRs, cfg.ServiceCIDRs) {
			c.setConfig(cfg)
			announce()
			return c
		}
		w.log.Info("cluster config changed; re-syncing it", "cluster", cfg.Name)
		w.removeCluster(cfg.Name)
	}
	announce()
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
	return c
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
	if _, ok := w.tapped[name]; ok {
		delete(w.tapped, name)
		w.emitEntry(kvstore.Event{Kind: kvstore.EventDelete, Key: clustermesh.ClusterKey(name)})
	}
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
	for name, note := range w.ungranted {
		reason := note.reason
		if _, gone := w.gone[name]; gone {
			delete(w.gone, name)
			out = slices.DeleteFunc(out, func(s clustermesh.RemoteClusterStatus) bool { return s.Name == name })
		}
		out = append(out, clustermesh.RemoteClusterStatus{Name: name, Ungranted: reason, LastError: reason})
	}
	w.mu.Unlock()
	for _, c := range cs {
		out = append(out, c.status())
	}
	slices.SortFunc(out, func(a, b clustermesh.RemoteClusterStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// checkLeases reads every LeaseCheckInterval how long each watched
// cluster's lease has left, until ctx is done.
func (w *Watcher) checkLeases(ctx context.Context) {
	t := time.NewTicker(w.cfg.LeaseCheckInterval)
	defer t.Stop()
	for {
		w.mu.Lock()
		cs := slices.Collect(maps.Values(w.clusters))
		w.mu.Unlock()
		for _, c := range cs {
			c.checkLease(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// InvalidConfigs returns how many cluster configs were rejected and the
// last error of the cluster config watch.
func (w *Watcher) InvalidConfigs() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.invalid, w.lastErr
}
