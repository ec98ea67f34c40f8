package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/reconcile"
)

// Defaults for Config's zero values.
const (
	DefaultLeaseTTL       = 15 * time.Second
	DefaultResyncInterval = 5 * time.Minute
	// DefaultWriteConcurrency is how many writes one reconcile pass has in
	// flight; etcd's throughput grows about fivefold from 1 to 16.
	DefaultWriteConcurrency = 16
)

// Config configures a Publisher.
type Config struct {
	// Cluster is the local cluster; its config is registered in the mesh.
	Cluster clustermesh.ClusterConfig
	// LeaseTTL is how long entries outlive the process; zero means
	// DefaultLeaseTTL. The leases are renewed every third of it.
	LeaseTTL time.Duration
	// ResyncInterval is how often owned keys are re-listed and compared
	// with the desired state, to repair writes made behind our back; zero
	// means DefaultResyncInterval.
	ResyncInterval time.Duration
	// WriteConcurrency bounds writes in flight; zero means
	// DefaultWriteConcurrency.
	WriteConcurrency int
	// ServiceLayout is which layouts services are written in; zero means
	// LayoutBoth.
	ServiceLayout ServiceLayout
	// KeysPerLease bounds the keys bound to one lease (see
	// DefaultKeysPerLease); zero means DefaultKeysPerLease. The cluster's
	// keys are spread over as many leases as that takes, all granted with
	// LeaseTTL and renewed together.
	KeysPerLease int
}

// Record is a mesh record a Publisher can write: clustermesh's *Node,
// *Identity, *IPEntry and *Service.
type Record = clustermesh.Record

// Publisher publishes one cluster's state. See the package doc.
type Publisher struct {
	cfg     Config
	store   kvstore.Store
	log     *slog.Logger
	metrics *metrics

	mu      sync.Mutex
	desired map[string][]byte           // key -> encoded value
	kindOf  map[string]clustermesh.Kind // key -> kind, for every desired key
	primed  map[clustermesh.Kind]bool   // kind got a full desired set
	dirty   map[string]struct{}         // keys whose desired value changed
	status  clustermesh.PublishStatus
	counts  map[clustermesh.Kind]int
	// byService holds each service's desired keys in every layout, by
	// "namespace/name"; chunkers its chunk assignment.
	byService map[string][]string
	chunkers  map[string]*chunker
	// chunksAdopted says the chunk assignment left in the store was
	// adopted (the first session does it).
	chunksAdopted bool

	loop *reconcile.Loop
	sess *session // owned by loop's rounds
}

// New builds a Publisher. It starts nothing and does no I/O.
func New(cfg Config, store kvstore.Store, log *slog.Logger, reg prometheus.Registerer) (*Publisher, error) {
	if err := cfg.Cluster.Validate(); err != nil {
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if err := clustermesh.ValidateLeaseTTL(cfg.LeaseTTL); err != nil {
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.WriteConcurrency <= 0 {
		cfg.WriteConcurrency = DefaultWriteConcurrency
	}
	if cfg.KeysPerLease <= 0 {
		cfg.KeysPerLease = DefaultKeysPerLease
	}
	layout, err := ParseServiceLayout(string(cfg.ServiceLayout))
	if err != nil {
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	cfg.ServiceLayout = layout
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	p := &Publisher{
		cfg:     cfg,
		store:   store,
		log:     log.With("cluster", cfg.Cluster.Name),
		metrics: m,
		desired: make(map[string][]byte),
		kindOf:  make(map[string]clustermesh.Kind),
		primed:  make(map[clustermesh.Kind]bool),
		dirty:   make(map[string]struct{}),
		status:  clustermesh.PublishStatus{Synced: map[clustermesh.Kind]bool{}, Entries: map[clustermesh.Kind]int{}},
		counts:  make(map[clustermesh.Kind]int),

		byService: make(map[string][]string),
		chunkers:  make(map[string]*chunker),
	}
	p.loop, err = reconcile.New(reconcile.Config{Name: "publish", Resync: cfg.ResyncInterval, MinBackoff: minBackoff, MaxBackoff: maxBackoff},
		p.round, p.log, reg)
	if err != nil {
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	return p, nil
}

// encode checks that rec belongs to kind under our prefix and encodes it.
func (p *Publisher) encode(kind clustermesh.Kind, rec Record) (string, []byte, error) {
	key, err := p.checkKey(kind, rec)
	if err != nil {
		return "", nil, err
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return "", nil, fmt.Errorf("publish %s record %s: encode: %w", kind, key, err)
	}
	return key, val, nil
}

// checkKey returns rec's key, checking that it lies under this cluster's
// prefix for kind.
func (p *Publisher) checkKey(kind clustermesh.Kind, rec Record) (string, error) {
	key := rec.Key()
	prefix := clustermesh.KindPrefix(kind, p.cfg.Cluster.Name)
	if !strings.HasPrefix(key, prefix) {
		return "", fmt.Errorf("publish %s record %s: key is outside this cluster's prefix %s", kind, key, prefix)
	}
	return key, nil
}

func kindOfRecord(rec Record) (clustermesh.Kind, error) {
	switch rec.(type) {
	case *clustermesh.Node:
		return clustermesh.KindNodes, nil
	case *clustermesh.Identity:
		return clustermesh.KindIdentities, nil
	case *clustermesh.IPEntry:
		return clustermesh.KindIPs, nil
	case *clustermesh.Service:
		return clustermesh.KindServices, nil
	case *clustermesh.ServiceHeader, *clustermesh.EndpointChunk:
		return clustermesh.KindServicesV2, nil
	}
	return "", fmt.Errorf("publish record %s: unsupported type %T", rec.Key(), rec)
}

// Replace makes records the complete desired set of kind. Owned keys of that
// kind not in records will be deleted. Nothing is written if any record is
// invalid. Services (KindServices) are written in the configured
// ServiceLayout; KindServicesV2 is written from them, so Replace of it
// accepts only an empty set, and does nothing (callers may replace every
// kind of clustermesh.Kinds).
func (p *Publisher) Replace(kind clustermesh.Kind, records []Record) error {
	if kind == clustermesh.KindServicesV2 {
		if len(records) > 0 {
			return fmt.Errorf("publish %s: give services as %s records", kind, clustermesh.KindServices)
		}
		return nil
	}
	for _, rec := range records {
		if k, err := kindOfRecord(rec); err != nil {
			return err
		} else if k != kind {
			return fmt.Errorf("publish record %s: a %s record given as %s", rec.Key(), k, kind)
		}
	}
	if kind == clustermesh.KindServices {
		return p.replaceServices(records)
	}
	want := make(map[string][]byte, len(records))
	for _, rec := range records {
		key, val, err := p.encode(kind, rec)
		if err != nil {
			return err
		}
		want[key] = val
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, k := range p.kindOf {
		if k != kind {
			continue
		}
		if _, ok := want[key]; !ok {
			p.unsetLocked(key)
		}
	}
	for key, val := range want {
		p.setLocked(kind, key, val)
	}
	p.primed[kind] = true
	p.wakeUp()
	return nil
}

// replaceServices is Replace for services, in every layout written.
func (p *Publisher) replaceServices(records []Record) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[string]encodedService{}
	for _, rec := range records {
		svc := rec.(*clustermesh.Service)
		if _, err := p.checkKey(clustermesh.KindServices, svc); err != nil {
			return err
		}
		enc, err := p.encodeServiceLocked(svc)
		if err != nil {
			return err
		}
		want[svc.NamespacedName()] = enc
	}
	for key, k := range p.kindOf {
		if k != clustermesh.KindServices && k != clustermesh.KindServicesV2 {
			continue
		}
		if name, ok := p.serviceOfKeyLocked(key); !ok || want[name].vals[key] == nil {
			p.unsetLocked(key)
		}
	}
	clear(p.byService)
	for name := range p.chunkers {
		if _, ok := want[name]; !ok {
			delete(p.chunkers, name)
		}
	}
	for name, enc := range want {
		p.setServiceLocked(name, enc)
	}
	p.primed[clustermesh.KindServices] = true
	p.primed[clustermesh.KindServicesV2] = true
	p.wakeUp()
	return nil
}

// serviceOfKeyLocked returns the "namespace/name" a desired service key
// (either layout) belongs to.
func (p *Publisher) serviceOfKeyLocked(key string) (string, bool) {
	pk, err := clustermesh.ParseKey(key)
	if err != nil {
		return "", false
	}
	if pk.Kind == clustermesh.KindServicesV2 {
		name, _, ok := clustermesh.SplitServicesV2Name(pk.Name)
		return name, ok
	}
	return pk.Name, pk.Kind == clustermesh.KindServices
}

// setServiceLocked makes enc the desired keys of service name.
func (p *Publisher) setServiceLocked(name string, enc encodedService) {
	for _, key := range p.byService[name] {
		if _, ok := enc.vals[key]; !ok {
			p.unsetLocked(key)
		}
	}
	keys := make([]string, 0, len(enc.vals))
	for key, val := range enc.vals {
		p.setLocked(enc.kinds[key], key, val)
		keys = append(keys, key)
	}
	p.byService[name] = keys
}

// Upsert adds or changes one record.
func (p *Publisher) Upsert(rec Record) error {
	kind, err := kindOfRecord(rec)
	if err != nil {
		return err
	}
	if kind == clustermesh.KindServicesV2 {
		return fmt.Errorf("publish record %s: give services as %s records", rec.Key(), clustermesh.KindServices)
	}
	if kind == clustermesh.KindServices {
		// Encoded under the lock, in the layouts written only: a large
		// service's single value is not built when it is not written.
		svc := rec.(*clustermesh.Service)
		if _, err := p.checkKey(kind, svc); err != nil {
			return err
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		enc, err := p.encodeServiceLocked(svc)
		if err != nil {
			return err
		}
		p.setServiceLocked(svc.NamespacedName(), enc)
		p.wakeUp()
		return nil
	}
	key, val, err := p.encode(kind, rec)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setLocked(kind, key, val)
	p.wakeUp()
	return nil
}

// Delete withdraws the record stored at key, if desired. For a service
// (its KindServices key), every layout of it is withdrawn.
func (p *Publisher) Delete(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pk, err := clustermesh.ParseKey(key); err == nil && pk.Kind == clustermesh.KindServices {
		for _, k := range p.byService[pk.Name] {
			p.unsetLocked(k)
		}
		delete(p.byService, pk.Name)
		delete(p.chunkers, pk.Name)
	}
	p.unsetLocked(key)
	p.wakeUp()
}

// unsetLocked withdraws key if it is desired.
func (p *Publisher) unsetLocked(key string) {
	kind, ok := p.kindOf[key]
	if !ok {
		return
	}
	p.counts[kind]--
	delete(p.desired, key)
	delete(p.kindOf, key)
	p.dirty[key] = struct{}{}
}

func (p *Publisher) setLocked(kind clustermesh.Kind, key string, val []byte) {
	old, ok := p.desired[key]
	if !ok {
		p.counts[kind]++
	}
	if ok && bytes.Equal(old, val) {
		return
	}
	p.desired[key] = val
	p.kindOf[key] = kind
	p.dirty[key] = struct{}{}
}

func (p *Publisher) wakeUp() { p.loop.Trigger() }

// LoopStatus reports how Run's rounds went.
func (p *Publisher) LoopStatus() reconcile.Status { return p.loop.Status() }

// Status returns a copy of the current status.
func (p *Publisher) Status() clustermesh.PublishStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.status
	s.Synced = maps.Clone(s.Synced)
	s.Entries = maps.Clone(p.counts)
	return s
}

func (p *Publisher) setError(err error) {
	p.mu.Lock()
	p.status.Failures++
	p.status.LastError = err.Error()
	if p.status.FailingSince.IsZero() {
		p.status.FailingSince = time.Now()
	}
	if errors.Is(err, kvstore.ErrPermissionDenied) && p.status.Registered {
		// Our own keys were writable before: the broker removed us.
		p.status.Removed = true
	}
	p.mu.Unlock()
	p.metrics.errors.Inc()
}

// setOK records that the store answered: the last error is over.
func (p *Publisher) setOK() {
	p.mu.Lock()
	p.status.LastError = ""
	p.status.FailingSince = time.Time{}
	p.mu.Unlock()
}

// register checks the local cluster against every cluster in the mesh and
// writes its config, bound to a lease of ls. It fails with a
// *clustermesh.RegistrationError when the name or ID is taken or CIDRs
// overlap, including when a conflicting cluster registered at the same
// moment and was first.
func (p *Publisher) register(ctx context.Context, ls *leaseSet) error {
	cfg := p.cfg.Cluster
	if err := p.CheckRegistration(ctx); err != nil {
		return err
	}
	val, err := json.Marshal(&cfg)
	if err != nil {
		return fmt.Errorf("register cluster %s: encode: %w", cfg.Name, err)
	}
	leases, err := ls.assign(ctx, []string{cfg.Key()})
	if err != nil {
		return fmt.Errorf("register cluster %s: %w", cfg.Name, err)
	}
	if err := p.store.Put(ctx, cfg.Key(), val, leases[cfg.Key()]); err != nil {
		return fmt.Errorf("register cluster %s: %w", cfg.Name, err)
	}
	ls.written(cfg.Key(), leases[cfg.Key()])
	return p.settleRace(ctx, ls)
}

// settleRace looks again after writing the config: a conflicting cluster
// may have registered between our check and our write. The older
// registration (lower create revision) keeps its place; if that is the
// other cluster, ours is withdrawn and the conflict returned. The other
// side runs the same rule, so exactly one of two racing clusters stays.
func (p *Publisher) settleRace(ctx context.Context, ls *leaseSet) error {
	cfg := p.cfg.Cluster
	kvs, _, err := p.store.List(ctx, clustermesh.ClustersPrefix)
	if err != nil {
		return fmt.Errorf("register cluster %s: list clusters: %w", cfg.Name, err)
	}
	var ours int64
	for _, kv := range kvs {
		if kv.Key == cfg.Key() {
			ours = kv.CreateRevision
		}
	}
	for _, kv := range kvs {
		other, err := clustermesh.DecodeClusterConfig(kv.Key, kv.Value)
		if err != nil || other.Name == cfg.Name || kv.CreateRevision > ours {
			continue
		}
		if conflict := clustermesh.CheckRegistration(cfg, []clustermesh.ClusterConfig{other}); conflict != nil {
			if err := p.store.Delete(ctx, cfg.Key()); err != nil {
				return errors.Join(conflict, fmt.Errorf("withdraw cluster %s: %w", cfg.Name, err))
			}
			ls.deleted(cfg.Key())
			return conflict
		}
	}
	return nil
}

// CheckRegistration reads the mesh's cluster configs and reports whether
// the local cluster may join, without writing anything. Invalid configs in
// the store are skipped (and logged): they cannot hold a name or range.
func (p *Publisher) CheckRegistration(ctx context.Context) error {
	kvs, _, err := p.store.List(ctx, clustermesh.ClustersPrefix)
	if err != nil {
		return fmt.Errorf("register cluster %s: list clusters: %w", p.cfg.Cluster.Name, err)
	}
	var existing []clustermesh.ClusterConfig
	for _, kv := range kvs {
		c, err := clustermesh.DecodeClusterConfig(kv.Key, kv.Value)
		if err != nil {
			p.log.Warn("ignoring invalid cluster config", "key", kv.Key, "err", err)
			continue
		}
		existing = append(existing, c)
	}
	return clustermesh.CheckRegistration(p.cfg.Cluster, existing)
}

var errLeaseLost = errors.New("lease lost")
