package datapath

import (
	"cmp"
	"context"
	"errors"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/prometheus/client_golang/prometheus"
)

// table is the part of a bpf.Map the reconciler uses.
type table[K comparable, V any] interface {
	Dump() (map[K]V, error)
	BatchUpdate(keys []K, vals []V) (int, error)
	BatchDelete(keys []K) (int, error)
	MaxEntries() uint32
}

// configWriter is the part of *bpf.Objects that sets runtime config.
type configWriter interface {
	SetDatapathConfig(bpf.DatapathConfig) error
}

// Maps are the maps a Reconciler owns.
type Maps struct {
	IPCache  table[bpf.IPCacheKey, bpf.IPCacheValue]
	Services table[bpf.ServiceKey, bpf.ServiceValue]
	Slots    table[bpf.SlotKey, bpf.BackendID]
	Backends table[bpf.BackendID, bpf.BackendValue]
	Policy   table[bpf.PolicyKey, bpf.PolicyValue]
	Config   configWriter
}

// MapsOf returns the Maps of loaded objects.
func MapsOf(o *bpf.Objects) Maps {
	return Maps{IPCache: o.IPCache, Services: o.Services, Slots: o.Slots, Backends: o.Backends, Policy: o.Policy, Config: o}
}

// Defaults of Config.
const (
	DefaultResyncInterval    = 5 * time.Minute
	DefaultPressureThreshold = 0.9
)

// Config configures a Reconciler.
type Config struct {
	Topology Topology
	// ResyncInterval is how often Run reapplies the last desired state,
	// pruning leftovers; zero means DefaultResyncInterval.
	ResyncInterval time.Duration
	// PressureThreshold is the fill ratio above which a map degrades
	// health; zero means DefaultPressureThreshold.
	PressureThreshold float64
}

// Reconciler makes the bpf maps equal to a Desired state.
type Reconciler struct {
	cfg  Config
	maps Maps
	log  *slog.Logger
	m    *metrics

	mu         sync.Mutex // serialises Reconcile
	lastConfig *bpf.DatapathConfig

	writes atomic.Uint64

	statusMu sync.Mutex
	status   Status

	wake    chan struct{}
	desired atomic.Pointer[Desired]
}

// New returns a Reconciler; it starts nothing. reg may be nil.
func New(cfg Config, m Maps, log *slog.Logger, reg prometheus.Registerer) (*Reconciler, error) {
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.PressureThreshold == 0 {
		cfg.PressureThreshold = DefaultPressureThreshold
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Reconciler{cfg: cfg, maps: m, log: log.With("component", "datapath"), m: met, wake: make(chan struct{}, 1)}, nil
}

// Writes returns how many map entries (updates plus deletes) and config
// writes all reconciles so far performed. A Reconcile with unchanged input
// leaves it unchanged.
func (r *Reconciler) Writes() uint64 { return r.writes.Load() }

// Update records want as the desired state and wakes Run. It never blocks.
func (r *Reconciler) Update(want Desired) {
	r.desired.Store(&want)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run reconciles on every Update and every ResyncInterval until ctx ends.
// Failures are retried with backoff (up to ResyncInterval).
func (r *Reconciler) Run(ctx context.Context) error {
	tick := time.NewTicker(r.cfg.ResyncInterval)
	defer tick.Stop()
	backoff := time.Duration(0)
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-tick.C:
		case <-retry:
		}
		want := r.desired.Load()
		if want == nil {
			continue
		}
		if err := r.Reconcile(ctx, *want); err != nil {
			backoff = min(max(2*backoff, 100*time.Millisecond), r.cfg.ResyncInterval)
			retry = time.After(backoff)
			r.log.Warn("reconcile datapath", "err", err, "retry", backoff)
			continue
		}
		backoff, retry = 0, nil
	}
}

// Reconcile makes the maps equal to want: it dumps every map, diffs, and
// writes only the difference in batches (updates before deletes, backends
// before slots before services, so a frontend never points at a missing
// backend). Entries the maps hold but want lacks are pruned. A second call
// with the same want performs no writes.
func (r *Reconciler) Reconcile(ctx context.Context, want Desired) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	err := r.reconcile(ctx, want)
	r.m.duration.Observe(time.Since(start).Seconds())
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	if err != nil {
		r.status.LastError = err.Error()
		return err
	}
	r.status.LastError = ""
	r.status.LastSuccess = time.Now()
	r.m.lastSuccess.SetToCurrentTime()
	return nil
}

func (r *Reconciler) reconcile(ctx context.Context, want Desired) error {
	topo := r.cfg.Topology
	var errs []error
	var stats []MapStatus

	// ipcache
	wantIP := ipcacheEntries(topo, want)
	st, err := sync1(r, "ipcache", r.maps.IPCache, wantIP, nil)
	errs, stats = append(errs, err), append(stats, st)

	// policy
	wantPol := make(map[bpf.PolicyKey]bpf.PolicyValue, len(want.Policy))
	for _, p := range want.Policy {
		k := bpf.PolicyKey{SrcIdentity: uint32(p.Src), DstIdentity: uint32(p.Dst), Port: bpf.Port(p.Port), Proto: protoNum(p.Protocol)}
		v := bpf.PolicyValue{Action: bpf.PolicyAllow}
		if p.Deny {
			v.Action = bpf.PolicyDeny
		}
		if old, ok := wantPol[k]; ok && old.Action == bpf.PolicyDeny {
			continue // deny wins over allow for the same key
		}
		wantPol[k] = v
	}
	st, err = sync1(r, "policy", r.maps.Policy, wantPol, nil)
	errs, stats = append(errs, err), append(stats, st)

	if err := ctx.Err(); err != nil {
		return err
	}

	// services, slots, backends
	svcStats, err := r.reconcileServices(want)
	errs, stats = append(errs, err), append(stats, svcStats...)

	if r.maps.Config != nil {
		c := bpf.DatapathConfig{TunnelIfindex: topo.TunnelIfindex}
		if want.DefaultDeny {
			c.DefaultDeny = 1
		}
		if r.lastConfig == nil || *r.lastConfig != c {
			if err := r.maps.Config.SetDatapathConfig(c); err != nil {
				r.m.errors.WithLabelValues("config").Inc()
				errs = append(errs, err)
			} else {
				r.lastConfig = &c
				r.writes.Add(1)
			}
		}
	}

	r.statusMu.Lock()
	r.status.Maps = stats
	r.statusMu.Unlock()
	return errors.Join(errs...)
}

// sync1 diffs one map against want and applies the difference. have is the
// map's current content; nil means dump it.
func sync1[K comparable, V comparable](r *Reconciler, name string, t table[K, V], want map[K]V, have map[K]V) (MapStatus, error) {
	st := MapStatus{Name: name, Desired: len(want)}
	if t == nil {
		return st, nil
	}
	st.Capacity = int(t.MaxEntries())
	if have == nil {
		var err error
		if have, err = t.Dump(); err != nil {
			r.m.errors.WithLabelValues(name).Inc()
			return st, err
		}
	}
	var upK []K
	var upV []V
	for k, v := range want {
		if old, ok := have[k]; !ok || old != v {
			upK = append(upK, k)
			upV = append(upV, v)
		}
	}
	var del []K
	for k := range have {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	var errs []error
	if len(upK) > 0 {
		n, err := t.BatchUpdate(upK, upV)
		r.writes.Add(uint64(n))
		r.m.writes.WithLabelValues(name, "update").Add(float64(n))
		errs = append(errs, err)
	}
	if len(del) > 0 {
		n, err := t.BatchDelete(del)
		r.writes.Add(uint64(n))
		r.m.writes.WithLabelValues(name, "delete").Add(float64(n))
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	if err != nil {
		r.m.errors.WithLabelValues(name).Inc()
	}
	st.Entries = len(want)
	if err != nil {
		st.Entries = len(have) // unknown mix; report what was there
	}
	if st.Capacity > 0 {
		st.Pressure = float64(st.Entries) / float64(st.Capacity)
	}
	r.m.entries.WithLabelValues(name).Set(float64(st.Entries))
	r.m.capacity.WithLabelValues(name).Set(float64(st.Capacity))
	r.m.pressure.WithLabelValues(name).Set(st.Pressure)
	return st, err
}

func ipcacheEntries(topo Topology, want Desired) map[bpf.IPCacheKey]bpf.IPCacheValue {
	out := make(map[bpf.IPCacheKey]bpf.IPCacheValue, len(want.IPCache)+len(want.Local))
	local := make(map[netip.Addr]bool, len(topo.NodeIPs))
	for _, a := range topo.NodeIPs {
		local[a.Unmap()] = true
	}
	for _, e := range want.IPCache {
		if !e.Prefix.IsValid() {
			continue
		}
		v := bpf.IPCacheValue{Identity: uint32(e.Identity), ClusterId: uint16(want.ClusterIDs[e.Cluster])}
		if e.HostIP.IsValid() {
			if local[e.HostIP.Unmap()] {
				v.Flags = bpf.IPCacheLocal
			} else {
				v.Flags = bpf.IPCacheTunnel
				v.TunnelFamily, v.TunnelEndpoint = bpf.AddrWords(e.HostIP)
			}
		}
		out[bpf.IPCacheKeyFor(e.Prefix.Masked())] = v
	}
	for _, e := range want.Local {
		out[bpf.IPCacheKeyFor(e.Prefix.Masked())] = bpf.IPCacheValue{Identity: uint32(e.Identity), ClusterId: uint16(topo.ClusterID), Flags: bpf.IPCacheLocal}
	}
	return out
}

func protoNum(p clustermesh.Protocol) uint8 {
	switch p {
	case clustermesh.TCP:
		return 6
	case clustermesh.UDP:
		return 17
	case clustermesh.SCTP:
		return 132
	}
	return 0
}

func affinityNum(a clustermesh.Affinity) uint8 {
	switch a {
	case clustermesh.AffinityLocal:
		return bpf.AffinityLocal
	case clustermesh.AffinityRemote:
		return bpf.AffinityRemote
	}
	return bpf.AffinityNone
}

// tier places b relative to this node.
func (t Topology) tier(b Backend) bpf.Tier {
	switch {
	case b.Cluster != t.Cluster:
		return bpf.TierRemote
	case t.Node != "" && b.Node == t.Node:
		return bpf.TierNode
	case t.Zone != "" && b.Zone == t.Zone:
		return bpf.TierZone
	}
	return bpf.TierCluster
}

func hash32(s string) uint32 {
	if s == "" {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// reconcileServices computes services, slots and backends. IDs are kept
// from the maps (so a restarted agent rewrites nothing): a backend keeps
// the ID its address already has, a service group keeps the SvcId its
// frontends already point at; new ones get the lowest free ID.
func (r *Reconciler) reconcileServices(want Desired) ([]MapStatus, error) {
	if r.maps.Services == nil || r.maps.Slots == nil || r.maps.Backends == nil {
		return nil, nil
	}
	topo := r.cfg.Topology
	haveSvc, err := r.maps.Services.Dump()
	if err != nil {
		r.m.errors.WithLabelValues("services").Inc()
		return nil, err
	}
	haveSlots, err := r.maps.Slots.Dump()
	if err != nil {
		r.m.errors.WithLabelValues("backend_slots").Inc()
		return nil, err
	}
	haveBe, err := r.maps.Backends.Dump()
	if err != nil {
		r.m.errors.WithLabelValues("backends").Inc()
		return nil, err
	}

	// Backends by address, reusing IDs.
	idOf := make(map[netip.AddrPort]uint32, len(haveBe))
	for _, id := range slices.Sorted(maps.Keys(haveBe)) {
		ap := haveBe[id].AddrPort()
		if _, dup := idOf[ap]; !dup {
			idOf[ap] = id
		}
	}
	usedBe := make(map[uint32]bool)
	wantBe := make(map[bpf.BackendID]bpf.BackendValue)
	nextBe := uint32(1)
	backendID := func(b Backend) uint32 {
		ap := netip.AddrPortFrom(b.Addr.Addr().Unmap(), b.Addr.Port())
		id, ok := idOf[ap]
		if !ok || (usedBe[id] && wantBe[id].AddrPort() != ap) {
			for haveBe[nextBe] != (bpf.BackendValue{}) || usedBe[nextBe] {
				nextBe++
			}
			id = nextBe
			idOf[ap] = id
		}
		if !usedBe[id] {
			usedBe[id] = true
			fam, w := bpf.AddrWords(ap.Addr())
			v := bpf.BackendValue{Addr: w, Port: bpf.Port(ap.Port()), Family: fam, Tier: uint8(topo.tier(b)),
				ClusterId: uint16(want.ClusterIDs[b.Cluster]), NodeId: hash32(b.Node), ZoneId: hash32(b.Zone)}
			if b.Healthy {
				v.Flags = bpf.BackendHealthy
			}
			wantBe[id] = v
		}
		return id
	}

	type group struct {
		keys []bpf.ServiceKey
		fam  uint8
		svc  *Service
	}
	var groups []group
	for i := range want.Services {
		s := &want.Services[i]
		byFam := map[uint8]*group{}
		for _, fe := range s.Frontends {
			k := bpf.ServiceKeyFor(fe.Addr, protoNum(fe.Protocol))
			g := byFam[k.Family]
			if g == nil {
				g = &group{fam: k.Family, svc: s}
				byFam[k.Family] = g
			}
			g.keys = append(g.keys, k)
		}
		for _, fam := range []uint8{bpf.FamilyV4, bpf.FamilyV6} {
			if g := byFam[fam]; g != nil {
				groups = append(groups, *g)
			}
		}
	}

	// Service IDs: keep the ID a group's frontends already use.
	usedSvc := make(map[uint32]bool)
	ids := make([]uint32, len(groups))
	for gi, g := range groups {
		for _, k := range g.keys {
			if v, ok := haveSvc[k]; ok && !usedSvc[v.SvcId] && v.SvcId != 0 {
				ids[gi] = v.SvcId
				usedSvc[v.SvcId] = true
				break
			}
		}
	}
	haveIDs := make(map[uint32]bool, len(haveSvc))
	for _, v := range haveSvc {
		haveIDs[v.SvcId] = true
	}
	nextSvc := uint32(1)
	for gi := range groups {
		if ids[gi] != 0 {
			continue
		}
		for usedSvc[nextSvc] || haveIDs[nextSvc] {
			nextSvc++
		}
		ids[gi] = nextSvc
		usedSvc[nextSvc] = true
	}

	wantSvc := make(map[bpf.ServiceKey]bpf.ServiceValue)
	wantSlots := make(map[bpf.SlotKey]bpf.BackendID)
	type ranked struct {
		id   uint32
		tier bpf.Tier
		ap   netip.AddrPort
	}
	for gi, g := range groups {
		var rs []ranked
		seen := map[netip.AddrPort]bool{}
		for _, b := range g.svc.Backends {
			fam, _ := bpf.AddrWords(b.Addr.Addr())
			ap := netip.AddrPortFrom(b.Addr.Addr().Unmap(), b.Addr.Port())
			if fam != g.fam || seen[ap] {
				continue
			}
			seen[ap] = true
			id := backendID(b)
			if !b.Healthy {
				continue // kept in backends, never in slots
			}
			rs = append(rs, ranked{id, topo.tier(b), ap})
		}
		slices.SortFunc(rs, func(a, b ranked) int {
			if c := cmp.Compare(a.tier, b.tier); c != 0 {
				return c
			}
			return a.ap.Compare(b.ap)
		})
		v := bpf.ServiceValue{SvcId: ids[gi], Affinity: affinityNum(g.svc.Affinity)}
		for i, rb := range rs {
			v.Count[rb.tier]++
			wantSlots[bpf.SlotKey{SvcId: ids[gi], Slot: uint32(i)}] = rb.id
		}
		for _, k := range g.keys {
			wantSvc[k] = v
		}
	}

	// Make before break: additions and changes in dependency order, then
	// removals in reverse order.
	var errs []error
	var stats [3]MapStatus
	stats[2], err = r.apply("backends", r.maps.Backends, wantBe, haveBe, true)
	errs = append(errs, err)
	stats[1], err = r.applySlots(wantSlots, haveSlots, true)
	errs = append(errs, err)
	stats[0], err = r.applySvc(wantSvc, haveSvc, true)
	errs = append(errs, err)
	if errors.Join(errs...) == nil {
		_, err = r.applySvc(wantSvc, haveSvc, false)
		errs = append(errs, err)
		_, err = r.applySlots(wantSlots, haveSlots, false)
		errs = append(errs, err)
		_, err = r.apply("backends", r.maps.Backends, wantBe, haveBe, false)
		errs = append(errs, err)
	}
	return stats[:], errors.Join(errs...)
}

func (r *Reconciler) applySvc(want, have map[bpf.ServiceKey]bpf.ServiceValue, upserts bool) (MapStatus, error) {
	return applyPhase(r, "services", r.maps.Services, want, have, upserts)
}

func (r *Reconciler) applySlots(want, have map[bpf.SlotKey]bpf.BackendID, upserts bool) (MapStatus, error) {
	return applyPhase(r, "backend_slots", r.maps.Slots, want, have, upserts)
}

func (r *Reconciler) apply(name string, t table[bpf.BackendID, bpf.BackendValue], want, have map[bpf.BackendID]bpf.BackendValue, upserts bool) (MapStatus, error) {
	return applyPhase(r, name, t, want, have, upserts)
}

// applyPhase writes either the upserts or the deletes of the diff.
func applyPhase[K comparable, V comparable](r *Reconciler, name string, t table[K, V], want, have map[K]V, upserts bool) (MapStatus, error) {
	w, h := want, have
	if upserts {
		// Pretend nothing is stale: only updates happen.
		h = make(map[K]V, len(want))
		for k := range want {
			if v, ok := have[k]; ok {
				h[k] = v
			}
		}
	} else {
		// Pretend every wanted entry is current: only deletes happen.
		w = make(map[K]V, len(want))
		for k := range have {
			if _, ok := want[k]; ok {
				w[k] = have[k]
			}
		}
		h = have
		return sync1(r, name, t, w, h)
	}
	return sync1(r, name, t, w, h)
}
