package datapath

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/braidmesh/braid/bpf"
	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/reconcile"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
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
	// CT is the connection-tracking table PruneConntrack collects; nil
	// disables collection. The programs fill it, the Reconciler only deletes.
	CT table[bpf.CTKey, bpf.CTValue]
}

// MapsOf returns the Maps of loaded objects.
func MapsOf(o *bpf.Objects) Maps {
	return Maps{IPCache: o.IPCache, Services: o.Services, Slots: o.Slots, Backends: o.Backends, Policy: o.Policy, Config: o, CT: o.CT}
}

// Defaults of Config.
const (
	DefaultResyncInterval    = 5 * time.Minute
	DefaultPressureThreshold = 0.9
	DefaultCTTimeoutTCP      = 6 * time.Hour
	DefaultCTTimeout         = 2 * time.Minute
)

// Pace is Run's reconcile.Config.Pace: a round dumps and diffs every map,
// which a cold sync of hundreds of clusters makes large while the desired
// state keeps changing, so a burst's rounds are spaced by twice their
// duration and the last one writes what came meanwhile in one batch.
const Pace = 1

// Config configures a Reconciler.
type Config struct {
	Topology Topology
	// ResyncInterval is how often Run reapplies the last desired state,
	// pruning leftovers; zero means DefaultResyncInterval.
	ResyncInterval time.Duration
	// PressureThreshold is the fill ratio above which a map degrades
	// health; zero means DefaultPressureThreshold.
	PressureThreshold float64
	// SocketLBNetnsCookie restricts the socket-level load balancer to the
	// sockets of one network namespace (its SO_NETNS_COOKIE, e.g. the host
	// namespace's); zero means every socket in the attached cgroup.
	SocketLBNetnsCookie uint64
	// CTTimeoutTCP and CTTimeout are how long a TCP, resp. any other,
	// connection-tracking entry may go unused before PruneConntrack
	// deletes it (Run prunes every ResyncInterval); zero means
	// DefaultCTTimeoutTCP and DefaultCTTimeout.
	CTTimeoutTCP time.Duration
	CTTimeout    time.Duration
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

	loop          *reconcile.Loop
	desired       atomic.Pointer[Desired]
	tunnelIfindex atomic.Uint32

	// monotonic reads the clock of CTValue.LastSeen (CLOCK_MONOTONIC, ns).
	monotonic func() uint64
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // CLOCK_MONOTONIC cannot fail on Linux
	}
	return uint64(ts.Nano())
}

// New returns a Reconciler; it starts nothing. reg may be nil.
func New(cfg Config, m Maps, log *slog.Logger, reg prometheus.Registerer) (*Reconciler, error) {
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.PressureThreshold == 0 {
		cfg.PressureThreshold = DefaultPressureThreshold
	}
	if cfg.CTTimeoutTCP == 0 {
		cfg.CTTimeoutTCP = DefaultCTTimeoutTCP
	}
	if cfg.CTTimeout == 0 {
		cfg.CTTimeout = DefaultCTTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	r := &Reconciler{cfg: cfg, maps: m, log: log.With("component", "datapath"), m: met, monotonic: monotonicNow}
	r.tunnelIfindex.Store(cfg.Topology.TunnelIfindex)
	r.loop, err = reconcile.New(reconcile.Config{Name: "datapath", Resync: cfg.ResyncInterval, Pace: Pace}, r.round, r.log, reg)
	if err != nil {
		return nil, fmt.Errorf("new datapath reconciler: %w", err)
	}
	return r, nil
}

// Writes returns how many map entries (updates plus deletes) and config
// writes all reconciles so far performed. A Reconcile with unchanged input
// leaves it unchanged.
func (r *Reconciler) Writes() uint64 { return r.writes.Load() }

// Update records want as the desired state and wakes Run. It never blocks.
func (r *Reconciler) Update(want Desired) {
	r.desired.Store(&want)
	r.loop.Trigger()
}

// SetTunnelIfindex sets the tunnel device remote pods are reached through
// (0 disables steering into it), replacing Topology.TunnelIfindex, and
// wakes Run if it changed. It never blocks.
func (r *Reconciler) SetTunnelIfindex(ifindex uint32) {
	if r.tunnelIfindex.Swap(ifindex) != ifindex {
		r.loop.Trigger()
	}
}

// Run reconciles on every Update and every ResyncInterval (pruning
// conntrack too) until ctx ends, on a reconcile.Loop named "datapath":
// failures are retried with backoff.
func (r *Reconciler) Run(ctx context.Context) error { return r.loop.Run(ctx) }

// LoopStatus reports how Run's rounds went.
func (r *Reconciler) LoopStatus() reconcile.Status { return r.loop.Status() }

// round is one round of Run.
func (r *Reconciler) round(ctx context.Context, resync bool) error {
	if resync {
		if n, err := r.PruneConntrack(); err != nil {
			r.log.Warn("prune conntrack", "err", err, "deleted", n)
		}
	}
	want := r.desired.Load()
	if want == nil {
		return nil // nothing desired yet
	}
	return r.Reconcile(ctx, *want)
}

// Reconcile makes the maps equal to want: it dumps every map, diffs, and
// writes only the difference in batches (updates before deletes, backends
// before slots before services, so a frontend never points at a missing
// backend). Entries the maps hold but want lacks are pruned. A second call
// with the same want performs no writes.
func (r *Reconciler) Reconcile(ctx context.Context, want Desired) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.reconcile(ctx, want)
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	if err != nil {
		r.status.LastError = err.Error()
		return err
	}
	r.status.LastError = ""
	r.status.LastSuccess = time.Now()
	if !want.KeepPolicy {
		r.status.PolicyRevision = want.PolicyRevision
	}
	return nil
}

func (r *Reconciler) reconcile(ctx context.Context, want Desired) error {
	topo := r.cfg.Topology
	var errs []error
	var stats []MapStatus

	// policy and ipcache, make before break: entries for identities an
	// address is about to take are in place before the ipcache points the
	// address at them, and the old ones go once it no longer does (a
	// relabelled pod keeps its established flows).
	var pol *change[bpf.PolicyKey, bpf.PolicyValue]
	if !want.KeepPolicy {
		var err error
		if pol, err = r.diffPolicy(policyEntries(want)); err != nil {
			errs, stats = append(errs, err), append(stats, MapStatus{Name: "policy", Desired: len(want.Policy)})
		}
	}
	var polUpErr error
	if pol != nil {
		polUpErr = pol.upsert(r)
	}
	ipKeys, ipVals := ipcacheEntries(topo, want)
	st, err := r.syncIPCache(ipKeys, ipVals, want.KeepPolicy)
	errs, stats = append(errs, err), append(stats, st)
	if pol != nil {
		var polDelErr error
		if polUpErr == nil && err == nil {
			polDelErr = pol.remove(r)
		}
		perr := errors.Join(polUpErr, polDelErr)
		errs, stats = append(errs, perr), append(stats, pol.status(r, perr))
	}

	if err := ctx.Err(); err != nil {
		return err
	}

	// services, slots, backends
	svcStats, err := r.reconcileServices(want)
	errs, stats = append(errs, err), append(stats, svcStats...)

	if r.maps.Config != nil {
		c := bpf.DatapathConfig{TunnelIfindex: r.tunnelIfindex.Load(), NetnsCookie: r.cfg.SocketLBNetnsCookie}
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

// FirstBlockIdentity is where address-block identities (Desired.Prefixes)
// start; they lie in cluster ID 0's range, which no cluster allocates.
const FirstBlockIdentity = 0x100

// policyEntries returns the policy trie's desired content.
func policyEntries(want Desired) map[bpf.PolicyKey]bpf.PolicyValue {
	out := make(map[bpf.PolicyKey]bpf.PolicyValue, len(want.Isolated)+len(want.Policy))
	for _, iso := range want.Isolated {
		out[bpf.PolicyIsolationKey(uint8(iso.Direction), uint32(iso.Identity))] = bpf.PolicyValue{Action: bpf.PolicyDeny}
	}
	for _, p := range want.Policy {
		hi := p.EndPort
		if hi < p.Port {
			hi = p.Port
		}
		for _, k := range bpf.PolicyAllowKeys(uint8(p.Direction), uint32(p.Local), uint32(p.Peer), protoNum(p.Protocol), p.Port, hi) {
			out[k] = bpf.PolicyValue{Action: bpf.PolicyAllow}
		}
	}
	return out
}

// diffPolicy dumps the policy trie and computes what makes it equal to
// want; nil without a policy map.
func (r *Reconciler) diffPolicy(want map[bpf.PolicyKey]bpf.PolicyValue) (*change[bpf.PolicyKey, bpf.PolicyValue], error) {
	t := r.maps.Policy
	if t == nil {
		return nil, nil
	}
	have, err := t.Dump()
	if err != nil {
		r.m.errors.WithLabelValues("policy").Inc()
		return nil, err
	}
	return diff("policy", t, want, have), nil
}

// PruneConntrack deletes connection-tracking entries idle for longer than
// Config.CTTimeoutTCP (TCP) or Config.CTTimeout (other protocols) and
// returns how many it deleted. It is safe to call concurrently with
// Reconcile. A flow whose entry is deleted just as a packet refreshes it
// starts over as a new flow (a service flow may pick another backend);
// the timeouts make that rare.
func (r *Reconciler) PruneConntrack() (int, error) {
	t := r.maps.CT
	if t == nil {
		return 0, nil
	}
	const name = "ct"
	entries, err := t.Dump()
	if err != nil {
		r.m.errors.WithLabelValues(name).Inc()
		return 0, err
	}
	now := r.monotonic()
	idleTCP, idle := uint64(r.cfg.CTTimeoutTCP), uint64(r.cfg.CTTimeout)
	var stale []bpf.CTKey
	for k, v := range entries {
		limit := idle
		if k.Proto == 6 {
			limit = idleTCP
		}
		if v.LastSeen+limit < now {
			stale = append(stale, k)
		}
	}
	n := 0
	if len(stale) > 0 {
		n, err = t.BatchDelete(stale)
		r.m.writes.WithLabelValues(name, "delete").Add(float64(n))
		if err != nil {
			r.m.errors.WithLabelValues(name).Inc()
		}
	}
	r.m.entries.WithLabelValues(name).Set(float64(len(entries) - n))
	return n, err
}

// change is the difference between one map and its desired content.
type change[K comparable, V comparable] struct {
	name       string
	t          table[K, V]
	upK        []K
	upV        []V
	del        []K
	want, have int
}

// diff computes what makes have equal to want.
func diff[K comparable, V comparable](name string, t table[K, V], want, have map[K]V) *change[K, V] {
	c := &change[K, V]{name: name, t: t, want: len(want), have: len(have)}
	if len(have) == 0 && len(want) > 0 {
		// Typical of a first reconcile: everything is new.
		c.upK = make([]K, 0, len(want))
		c.upV = make([]V, 0, len(want))
	}
	matched := 0 // entries of have that want keeps
	for k, v := range want {
		if old, ok := have[k]; ok {
			matched++
			if old == v {
				continue
			}
		}
		c.upK = append(c.upK, k)
		c.upV = append(c.upV, v)
	}
	if matched < len(have) {
		for k := range have {
			if _, ok := want[k]; !ok {
				c.del = append(c.del, k)
			}
		}
	}
	return c
}

// diffList is diff for a desired state given as unique keys and their
// values (written in that order); wanted reports whether a key is among
// them and is only called when have holds entries to delete.
func diffList[K comparable, V comparable](name string, t table[K, V], keys []K, vals []V, have map[K]V, wanted func(K) bool) *change[K, V] {
	c := &change[K, V]{name: name, t: t, want: len(keys), have: len(have)}
	if len(have) == 0 {
		c.upK, c.upV = keys, vals
		return c
	}
	matched := 0 // entries of have that want keeps
	for i, k := range keys {
		if old, ok := have[k]; ok {
			matched++
			if old == vals[i] {
				continue
			}
		}
		c.upK = append(c.upK, k)
		c.upV = append(c.upV, vals[i])
	}
	if matched < len(have) {
		for k := range have {
			if !wanted(k) {
				c.del = append(c.del, k)
			}
		}
	}
	return c
}

func (c *change[K, V]) upsert(r *Reconciler) error {
	if len(c.upK) == 0 {
		return nil
	}
	n, err := c.t.BatchUpdate(c.upK, c.upV)
	r.writes.Add(uint64(n))
	r.m.writes.WithLabelValues(c.name, "update").Add(float64(n))
	if err != nil {
		r.m.errors.WithLabelValues(c.name).Inc()
	}
	return err
}

func (c *change[K, V]) remove(r *Reconciler) error {
	if len(c.del) == 0 {
		return nil
	}
	n, err := c.t.BatchDelete(c.del)
	r.writes.Add(uint64(n))
	r.m.writes.WithLabelValues(c.name, "delete").Add(float64(n))
	if err != nil {
		r.m.errors.WithLabelValues(c.name).Inc()
	}
	return err
}

// status reports the map after the change; err is the change's outcome.
func (c *change[K, V]) status(r *Reconciler, err error) MapStatus {
	st := MapStatus{Name: c.name, Desired: c.want, Capacity: int(c.t.MaxEntries()), Entries: c.want}
	if err != nil {
		st.Entries = c.have // unknown mix; report what was there
	}
	if st.Capacity > 0 {
		st.Pressure = float64(st.Entries) / float64(st.Capacity)
	}
	r.m.entries.WithLabelValues(c.name).Set(float64(st.Entries))
	r.m.capacity.WithLabelValues(c.name).Set(float64(st.Capacity))
	r.m.pressure.WithLabelValues(c.name).Set(st.Pressure)
	return st
}

// ipcacheOrder sorts keys by family, address (as the trie sees it, most
// significant bit first), then prefix length.
func ipcacheOrder(a, b bpf.IPCacheKey) int {
	if c := cmp.Compare(a.Family, b.Family); c != 0 {
		return c
	}
	for i := range a.Addr {
		if c := cmp.Compare(netOrder(a.Addr[i]), netOrder(b.Addr[i])); c != 0 {
			return c
		}
	}
	return cmp.Compare(a.Prefixlen, b.Prefixlen)
}

// netOrder turns a key word (network bytes in native order) into a number
// that compares like the address.
func netOrder(w uint32) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], w)
	return binary.BigEndian.Uint32(b[:])
}

// ipEntry is one ipcache entry to write.
type ipEntry struct {
	k   bpf.IPCacheKey
	v   bpf.IPCacheValue
	seq int // input position: on duplicate keys the later entry wins
}

// ipcacheEntries returns the wanted ipcache keys, sorted by ipcacheOrder
// and unique, and their values. The agent passes IPCache sorted by prefix,
// so the sort is mostly a linear check.
func ipcacheEntries(topo Topology, want Desired) ([]bpf.IPCacheKey, []bpf.IPCacheValue) {
	es := make([]ipEntry, 0, len(want.Prefixes)+len(want.IPCache)+len(want.Local))
	local := make(map[netip.Addr]bool, len(topo.NodeIPs))
	for _, a := range topo.NodeIPs {
		local[a.Unmap()] = true
	}
	// Address blocks first: a pod's entry for the same prefix wins.
	for _, e := range want.Prefixes {
		if !e.Prefix.IsValid() {
			continue
		}
		es = append(es, ipEntry{bpf.IPCacheKeyFor(e.Prefix.Masked()), bpf.IPCacheValue{Identity: uint32(e.Identity)}, len(es)})
	}
	for _, e := range want.IPCache {
		if !e.Prefix.IsValid() {
			continue
		}
		v := bpf.IPCacheValue{Identity: uint32(e.Identity), ClusterId: uint16(want.ClusterIDs[e.Cluster])}
		if e.HostIP.IsValid() {
			if local[e.HostIP.Unmap()] {
				v.Flags = bpf.IPCacheLocal
			} else if e.Cluster != topo.Cluster || topo.Cluster == "" {
				// Only other clusters' nodes are WireGuard peers; a
				// node of this cluster is reached over the underlay.
				v.Flags = bpf.IPCacheTunnel
				v.TunnelFamily, v.TunnelEndpoint = bpf.AddrWords(e.HostIP)
			}
		}
		es = append(es, ipEntry{bpf.IPCacheKeyFor(e.Prefix.Masked()), v, len(es)})
	}
	for _, e := range want.Local {
		if !e.Prefix.IsValid() {
			continue
		}
		v := bpf.IPCacheValue{Identity: uint32(e.Identity), ClusterId: uint16(topo.ClusterID), Flags: bpf.IPCacheLocal}
		es = append(es, ipEntry{bpf.IPCacheKeyFor(e.Prefix.Masked()), v, len(es)})
	}
	slices.SortFunc(es, func(a, b ipEntry) int {
		return cmp.Or(ipcacheOrder(a.k, b.k), cmp.Compare(a.seq, b.seq))
	})
	keys := make([]bpf.IPCacheKey, 0, len(es))
	vals := make([]bpf.IPCacheValue, 0, len(es))
	for i := range es {
		if i+1 < len(es) && es[i+1].k == es[i].k {
			continue // keep the last of each run of equal keys
		}
		keys = append(keys, es[i].k)
		vals = append(vals, es[i].v)
	}
	return keys, vals
}

// syncIPCache is sync1 for the ipcache, whose desired state is a sorted
// list: no map of 100k entries is built, and upserts come out sorted.
//
// keepBlocks keeps the address-block entries the maps hold (identities
// of cluster ID 0 from FirstBlockIdentity up, without flags).
func (r *Reconciler) syncIPCache(keys []bpf.IPCacheKey, vals []bpf.IPCacheValue, keepBlocks bool) (MapStatus, error) {
	const name = "ipcache"
	t := r.maps.IPCache
	if t == nil {
		return MapStatus{Name: name, Desired: len(keys)}, nil
	}
	have, err := t.Dump()
	if err != nil {
		r.m.errors.WithLabelValues(name).Inc()
		return MapStatus{Name: name, Desired: len(keys), Capacity: int(t.MaxEntries())}, err
	}
	c := diffList(name, t, keys, vals, have, func(k bpf.IPCacheKey) bool {
		if v := have[k]; keepBlocks && v.Flags == 0 && v.Identity >= FirstBlockIdentity && v.Identity < 1<<clustermesh.IdentityClusterShift {
			return true
		}
		_, found := slices.BinarySearchFunc(keys, k, ipcacheOrder)
		return found
	})
	err = errors.Join(c.upsert(r), c.remove(r))
	return c.status(r, err), err
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

// beAddr is a backend's address as stored in a BackendValue.
type beAddr struct {
	addr [4]uint32
	port uint16 // network order
	fam  uint8
}

// compare orders like netip.AddrPort.Compare: family, address, port.
func (a beAddr) compare(b beAddr) int {
	if c := cmp.Compare(a.fam, b.fam); c != 0 {
		return c
	}
	for i := range a.addr {
		if c := cmp.Compare(netOrder(a.addr[i]), netOrder(b.addr[i])); c != 0 {
			return c
		}
	}
	return cmp.Compare(bpf.Port(a.port), bpf.Port(b.port))
}

// hash32 is FNV-1a of s (0 for ""), without allocating.
func hash32(s string) uint32 {
	if s == "" {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
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

	nBackends, nFrontends := 0, 0
	for i := range want.Services {
		nBackends += len(want.Services[i].Backends)
		nFrontends += len(want.Services[i].Frontends)
	}

	// Backends by address, reusing IDs.
	idOf := make(map[beAddr]uint32, max(len(haveBe), nBackends))
	for _, id := range slices.Sorted(maps.Keys(haveBe)) {
		v := haveBe[id]
		a := beAddr{v.Addr, v.Port, v.Family}
		if _, dup := idOf[a]; !dup {
			idOf[a] = id
		}
	}
	wantBe := make(map[bpf.BackendID]bpf.BackendValue, nBackends)
	nextBe := uint32(1)
	backendID := func(b Backend, a beAddr, tier bpf.Tier) uint32 {
		id, ok := idOf[a]
		if ok {
			if cur, used := wantBe[id]; used {
				if (beAddr{cur.Addr, cur.Port, cur.Family}) == a {
					return id
				}
				ok = false // the ID went to another address
			}
		}
		if !ok {
			for {
				_, used := wantBe[nextBe]
				if !used && haveBe[nextBe] == (bpf.BackendValue{}) {
					break
				}
				nextBe++
			}
			id = nextBe
			idOf[a] = id
		}
		v := bpf.BackendValue{Addr: a.addr, Port: a.port, Family: a.fam, Tier: uint8(tier),
			ClusterId: uint16(want.ClusterIDs[b.Cluster]), NodeId: hash32(b.Node), ZoneId: hash32(b.Zone)}
		if b.usable() {
			v.Flags = bpf.BackendHealthy
		}
		wantBe[id] = v
		return id
	}

	// A group is one service's frontends of one family.
	type group struct {
		keys []bpf.ServiceKey
		fam  uint8
		svc  *Service
	}
	groups := make([]group, 0, len(want.Services))
	keys := make([]bpf.ServiceKey, 0, nFrontends) // backs every group's keys
	for i := range want.Services {
		s := &want.Services[i]
		for _, fam := range [...]uint8{bpf.FamilyV4, bpf.FamilyV6} {
			first := len(keys)
			for _, fe := range s.Frontends {
				if k := bpf.ServiceKeyFor(fe.Addr, protoNum(fe.Protocol)); k.Family == fam {
					keys = append(keys, k)
				}
			}
			if len(keys) > first {
				groups = append(groups, group{keys: keys[first:len(keys):len(keys)], fam: fam, svc: s})
			}
		}
	}

	// Service IDs: keep the ID a group's frontends already use.
	usedSvc := make(map[uint32]bool, len(groups))
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

	wantSvc := make(map[bpf.ServiceKey]bpf.ServiceValue, nFrontends)
	slotK := make([]bpf.SlotKey, 0, nBackends)
	slotV := make([]bpf.BackendID, 0, nBackends)
	slotsOf := make(map[uint32]uint32, len(groups)) // SvcId -> number of slots
	type ranked struct {
		id     uint32
		band   int
		a      beAddr
		usable bool
	}
	fallback := 0     // services in fallback
	var rs []ranked   // reused per group
	var seen []beAddr // reused per group; small services scan it
	var seenSet map[beAddr]bool
	for gi, g := range groups {
		rs, seen = rs[:0], seen[:0]
		bands := tierBands(g.svc.Affinity, g.svc.Topology)
		usable := 0
		large := len(g.svc.Backends) > 32
		if large {
			seenSet = make(map[beAddr]bool, len(g.svc.Backends))
		}
		for _, b := range g.svc.Backends {
			fam, w := bpf.AddrWords(b.Addr.Addr())
			if fam != g.fam {
				continue
			}
			a := beAddr{w, bpf.Port(b.Addr.Port()), fam}
			if large {
				if seenSet[a] {
					continue
				}
				seenSet[a] = true
			} else {
				if slices.Contains(seen, a) {
					continue
				}
				seen = append(seen, a)
			}
			tier := topo.tier(b)
			id := backendID(b, a, tier)
			if !b.Healthy {
				continue // kept in backends, never in slots
			}
			if b.usable() {
				usable++
			}
			rs = append(rs, ranked{id, bands[tier], a, b.usable()})
		}
		v := bpf.ServiceValue{SvcId: ids[gi], Affinity: affinityNum(g.svc.Affinity)}
		if usable > 0 {
			rs = slices.DeleteFunc(rs, func(x ranked) bool { return !x.usable })
		} else if len(rs) > 0 {
			// Every ready backend's node is unreachable: serve from all of
			// them rather than blackhole the service.
			v.Flags = bpf.ServiceFallback
			fallback++
		}
		slices.SortFunc(rs, func(x, y ranked) int {
			return cmp.Or(cmp.Compare(x.band, y.band), x.a.compare(y.a))
		})
		for i, rb := range rs {
			v.Count[rb.band]++
			slotK = append(slotK, bpf.SlotKey{SvcId: ids[gi], Slot: uint32(i)})
			slotV = append(slotV, rb.id)
		}
		slotsOf[ids[gi]] = uint32(len(rs))
		for _, k := range g.keys {
			wantSvc[k] = v
		}
	}

	// Make before break: additions and changes in dependency order, then
	// removals in reverse order, only once every addition succeeded.
	be := diff("backends", r.maps.Backends, wantBe, haveBe)
	sl := diffList("backend_slots", r.maps.Slots, slotK, slotV, haveSlots, func(k bpf.SlotKey) bool {
		return k.Slot < slotsOf[k.SvcId]
	})
	sv := diff("services", r.maps.Services, wantSvc, haveSvc)
	beErr := be.upsert(r)
	slErr := sl.upsert(r)
	svErr := sv.upsert(r)
	if beErr == nil && slErr == nil && svErr == nil {
		svErr = sv.remove(r)
		slErr = sl.remove(r)
		beErr = be.remove(r)
	}
	r.m.fallback.Set(float64(fallback))
	r.statusMu.Lock()
	r.status.Fallback = fallback
	r.statusMu.Unlock()
	stats := []MapStatus{sv.status(r, svErr), sl.status(r, slErr), be.status(r, beErr)}
	return stats, errors.Join(beErr, slErr, svErr)
}
