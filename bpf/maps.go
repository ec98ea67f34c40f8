package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/cilium/ebpf"
)

// Key and value types of the maps. They are generated from braid.c, so their
// layout cannot drift from the programs'. Addresses and ports are in network
// byte order; use the helpers below rather than filling them by hand.
type (
	IPCacheKey       = braidIpcacheKey
	IPCacheValue     = braidIpcacheValue
	ServiceKey       = braidSvcKey
	ServiceValue     = braidSvcValue
	SlotKey          = braidSlotKey
	BackendValue     = braidBackendValue
	PolicyKey        = braidPolicyKey
	PolicyValue      = braidPolicyValue
	DropKey          = braidDropKey
	DropEvent        = braidDropEvent
	CTKey            = braidCtKey
	CTValue          = braidCtValue
	DatapathConfig   = braidDatapathConfig
	SockRevNATKey    = braidSockRevnatKey
	SockRevNATValue  = braidSockRevnatValue
	BackendID        = uint32
	ServiceBackendID = uint32
)

// Address families as stored in keys and values.
const (
	FamilyV4 uint8 = 4
	FamilyV6 uint8 = 6
)

// Tier is a backend's topology relative to this node (BackendValue.Tier).
type Tier uint8

// Tiers, closest first.
const (
	TierNode    = Tier(braidBraidTierTIER_NODE)
	TierZone    = Tier(braidBraidTierTIER_ZONE)
	TierCluster = Tier(braidBraidTierTIER_CLUSTER)
	TierRegion  = Tier(braidBraidTierTIER_REGION)
	TierRemote  = Tier(braidBraidTierTIER_REMOTE)
	NumTiers    = int(braidBraidTierTIER_MAX)
)

// NumBands is the length of ServiceValue.Count. A service's slots are laid
// out band by band, most preferred first; the programs pick evenly among
// the healthy backends of the first band that has one.
const NumBands = len(ServiceValue{}.Count)

// Affinity values of ServiceValue.Affinity.
const (
	AffinityNone   = uint8(braidBraidAffinityAFFINITY_NONE)
	AffinityLocal  = uint8(braidBraidAffinityAFFINITY_LOCAL)
	AffinityRemote = uint8(braidBraidAffinityAFFINITY_REMOTE)
)

// Flags.
const (
	BackendHealthy = uint16(braidBraidBackendFlagsBACKEND_F_HEALTHY)
	// ServiceFallback marks a service none of whose backends is healthy:
	// its slots hold every ready backend and any of them may be picked.
	ServiceFallback = uint8(braidBraidServiceFlagsSVC_F_FALLBACK)
	IPCacheLocal    = uint8(braidBraidIpcacheFlagsIPCACHE_F_LOCAL)
	IPCacheTunnel   = uint8(braidBraidIpcacheFlagsIPCACHE_F_TUNNEL)
	PolicyAllow     = uint8(braidBraidPolicyActionPOLICY_ALLOW)
	PolicyDeny      = uint8(braidBraidPolicyActionPOLICY_DENY)
)

// Directions of policy entries and drops, seen from the local pod.
const (
	PolicyIngress = uint8(braidBraidPolicyDirPOLICY_INGRESS)
	PolicyEgress  = uint8(braidBraidPolicyDirPOLICY_EGRESS)
)

// Reasons of policy drops (DropKey.Reason, DropEvent.Reason).
const (
	// DropReasonPolicy: the local identity is isolated by a policy in
	// that direction and no entry allows the packet.
	DropReasonPolicy = uint8(braidBraidDropReasonDROP_REASON_POLICY)
	// DropReasonDefaultDeny: the cluster's default deny, no entry.
	DropReasonDefaultDeny = uint8(braidBraidDropReasonDROP_REASON_DEFAULT_DENY)
)

// DropRingSize is how many recent drops the programs keep
// (DROP_RING_SIZE in braid.c).
const DropRingSize = 64

// AnyIdentity as a policy key's peer matches every peer.
const AnyIdentity = 0

// Prefix lengths of policy keys (see POLICY_PREFIX_FULL in braid.c).
const (
	policyPrefixIsolation = 64
	policyPrefixPeer      = 96
	policyPrefixProto     = 104
	policyPrefixPortBase  = 112
)

// PolicyIsolationKey is the entry that isolates local in dir: traffic no
// more specific entry allows is dropped. Its value's Action is PolicyDeny.
func PolicyIsolationKey(dir uint8, local uint32) PolicyKey {
	return PolicyKey{Prefixlen: policyPrefixIsolation, LocalIdentity: local, Dir: dir}
}

// PolicyAllowKeys returns the entries that allow traffic between local and
// peer (AnyIdentity: every peer) in dir: every protocol when proto is 0,
// else protocol proto on ports lo..hi (host order; 0..0 means every port).
// A range becomes the fewest aligned blocks that cover it exactly.
func PolicyAllowKeys(dir uint8, local, peer uint32, proto uint8, lo, hi uint16) []PolicyKey {
	base := PolicyKey{LocalIdentity: local, Dir: dir, PeerIdentity: peer}
	if proto == 0 {
		base.Prefixlen = policyPrefixPeer
		return []PolicyKey{base}
	}
	base.Proto = proto
	if lo == 0 && hi == 0 || lo == 0 && hi == 0xffff {
		base.Prefixlen = policyPrefixProto
		return []PolicyKey{base}
	}
	if hi < lo {
		hi = lo
	}
	var out []PolicyKey
	for cur := uint32(lo); cur <= uint32(hi); {
		// The largest aligned block starting at cur that stays within hi.
		size := uint32(1)
		for cur%(size*2) == 0 && cur+size*2-1 <= uint32(hi) && size < 1<<16 {
			size *= 2
		}
		bits := 16
		for s := size; s > 1; s /= 2 {
			bits--
		}
		k := base
		k.Prefixlen = uint32(policyPrefixPortBase + bits)
		k.Port = Port(uint16(cur))
		out = append(out, k)
		cur += size
	}
	return out
}

// Counter indexes the datapath's packet counters.
type Counter uint32

// Counters kept by the programs.
const (
	CounterForward         = Counter(braidBraidCounterCOUNTER_FORWARD)
	CounterReply           = Counter(braidBraidCounterCOUNTER_REPLY)
	CounterDropPolicy      = Counter(braidBraidCounterCOUNTER_DROP_POLICY)
	CounterDropDefaultDeny = Counter(braidBraidCounterCOUNTER_DROP_DEFAULT_DENY)
	CounterDropNoBackend   = Counter(braidBraidCounterCOUNTER_DROP_NO_BACKEND)
	CounterServiceDNAT     = Counter(braidBraidCounterCOUNTER_SVC_DNAT)
	CounterSockLB          = Counter(braidBraidCounterCOUNTER_SOCK_LB)
	CounterTunnelRedirect  = Counter(braidBraidCounterCOUNTER_TUNNEL_REDIRECT)
	CounterFallback        = Counter(braidBraidCounterCOUNTER_FALLBACK)
	NumCounters            = int(braidBraidCounterCOUNTER_MAX)
)

var counterNames = [...]string{"forward", "reply", "drop_policy", "drop_default_deny", "drop_no_backend", "service_dnat", "sock_lb", "tunnel_redirect", "fallback"}

// String returns the counter's metric-friendly name, e.g. "drop_policy".
func (c Counter) String() string {
	if int(c) < len(counterNames) {
		return counterNames[c]
	}
	return fmt.Sprintf("counter%d", uint32(c))
}

// AddrWords converts a to the family and 4-word form used in keys (an IPv4
// address in word 0). An IPv4-mapped IPv6 address counts as IPv4.
func AddrWords(a netip.Addr) (family uint8, w [4]uint32) {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		w[0] = binary.NativeEndian.Uint32(b[:])
		return FamilyV4, w
	}
	b := a.As16()
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return FamilyV6, w
}

// WordsAddr is the inverse of AddrWords; it returns the zero Addr for an
// unknown family.
func WordsAddr(family uint8, w [4]uint32) netip.Addr {
	switch family {
	case FamilyV4:
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], w[0])
		return netip.AddrFrom4(b)
	case FamilyV6:
		var b [16]byte
		for i := range w {
			binary.NativeEndian.PutUint32(b[4*i:], w[i])
		}
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// Port converts a host-order port to the network-order form in keys; it is
// its own inverse.
func Port(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// IPCacheKeyFor returns the key of prefix p (which should be masked).
func IPCacheKeyFor(p netip.Prefix) IPCacheKey {
	fam, w := AddrWords(p.Addr())
	bits := p.Bits()
	if p.Addr().Is4In6() {
		bits -= 96
	}
	return IPCacheKey{Prefixlen: uint32(32 + bits), Family: fam, Addr: w}
}

// Prefix returns the prefix k stands for.
func (k IPCacheKey) Prefix() netip.Prefix {
	return netip.PrefixFrom(WordsAddr(k.Family, k.Addr), int(k.Prefixlen)-32)
}

// ServiceKeyFor returns the key of frontend ap with IP protocol proto
// (6 TCP, 17 UDP).
func ServiceKeyFor(ap netip.AddrPort, proto uint8) ServiceKey {
	fam, w := AddrWords(ap.Addr())
	return ServiceKey{Addr: w, Port: Port(ap.Port()), Proto: proto, Family: fam}
}

// AddrPort returns the frontend address of k.
func (k ServiceKey) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(WordsAddr(k.Family, k.Addr), Port(k.Port))
}

// AddrPort returns the backend's address.
func (v BackendValue) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(WordsAddr(v.Family, v.Addr), Port(v.Port))
}

// Map is a typed view of one pinned map. Methods are safe for concurrent use
// (the kernel serialises element operations); a Dump taken while another
// writer runs may mix old and new entries.
type Map[K comparable, V any] struct {
	m    *ebpf.Map
	name string
	size atomic.Int64 // entries the last Dump found: sizes the next one
}

// Typed wrappers of the maps the reconcilers own.
type (
	IPCacheMap = Map[IPCacheKey, IPCacheValue]
	ServiceMap = Map[ServiceKey, ServiceValue]
	SlotMap    = Map[SlotKey, BackendID]
	BackendMap = Map[BackendID, BackendValue]
	PolicyMap  = Map[PolicyKey, PolicyValue]
	DropMap    = Map[DropKey, uint64]
	CTMap      = Map[CTKey, CTValue]
)

func newMap[K comparable, V any](m *ebpf.Map, name string) *Map[K, V] {
	return &Map[K, V]{m: m, name: name}
}

// Name returns the map's name in the ELF and pin directory.
func (m *Map[K, V]) Name() string { return m.name }

// MaxEntries returns the map's capacity.
func (m *Map[K, V]) MaxEntries() uint32 { return m.m.MaxEntries() }

// Lookup returns the value at k; the error wraps ebpf.ErrKeyNotExist when
// there is none.
func (m *Map[K, V]) Lookup(k K) (V, error) {
	var v V
	if err := m.m.Lookup(&k, &v); err != nil {
		return v, fmt.Errorf("lookup %s: %w", m.name, err)
	}
	return v, nil
}

// Update writes one entry.
func (m *Map[K, V]) Update(k K, v V) error {
	if err := m.m.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update %s: %w", m.name, err)
	}
	return nil
}

const batchSize = 4096

// Dump returns every entry.
func (m *Map[K, V]) Dump() (map[K]V, error) {
	out := make(map[K]V, m.size.Load())
	defer func() { m.size.Store(int64(len(out))) }()
	keys := make([]K, batchSize)
	vals := make([]V, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", m.name, err)
		}
	}
	// No batch support for this map type: iterate.
	clear(out)
	var k K
	var v V
	it := m.m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump %s: %w", m.name, err)
	}
	return out, nil
}

// BatchUpdate writes keys[i] = vals[i] for every i, in chunks. It returns how
// many entries were written before any error.
func (m *Map[K, V]) BatchUpdate(keys []K, vals []V) (int, error) {
	if len(keys) != len(vals) {
		return 0, fmt.Errorf("batch update %s: %d keys, %d values", m.name, len(keys), len(vals))
	}
	done := 0
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		c, err := m.m.BatchUpdate(keys[:n], vals[:n], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for i := 0; i < n; i++ {
				if err := m.m.Update(&keys[i], &vals[i], ebpf.UpdateAny); err != nil {
					return done, fmt.Errorf("update %s: %w", m.name, err)
				}
				done++
			}
		} else {
			done += c
			if err != nil {
				return done, fmt.Errorf("batch update %s: %w", m.name, err)
			}
		}
		keys, vals = keys[n:], vals[n:]
	}
	return done, nil
}

// BatchDelete removes keys. Keys already absent are not an error, so a
// delete can be retried.
func (m *Map[K, V]) BatchDelete(keys []K) (int, error) {
	done := 0
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		c, err := m.m.BatchDelete(keys[:n], nil)
		done += c
		if err != nil {
			// The kernel stops at the first missing key: delete the rest one by one.
			for i := c; i < n; i++ {
				err := m.m.Delete(&keys[i])
				if err == nil {
					done++
				} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
					return done, fmt.Errorf("delete %s: %w", m.name, err)
				}
			}
		}
		keys = keys[n:]
	}
	return done, nil
}
