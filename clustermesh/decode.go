package clustermesh

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// ErrInvalid is matched (errors.Is) by every *ValidationError.
var ErrInvalid = errors.New("invalid mesh entry")

// ValidationError says why an entry read from the store was rejected. The
// entry must not be applied; consumers count it.
type ValidationError struct {
	Key    string
	Kind   Kind // empty for cluster configs
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("reject %q: %s", e.Key, e.Reason)
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

func invalid(key string, kind Kind, format string, args ...any) error {
	return &ValidationError{Key: key, Kind: kind, Reason: fmt.Sprintf(format, args...)}
}

// maxValueSize bounds a single value; larger values are rejected before
// parsing so a hostile writer cannot make consumers allocate without bound.
const maxValueSize = 1 << 20

// decodeStrict unmarshals exactly one JSON object with no unknown fields.
func decodeStrict(value []byte, v any) error {
	if len(value) > maxValueSize {
		return fmt.Errorf("value is %d bytes, more than %d", len(value), maxValueSize)
	}
	if b := bytes.TrimLeft(value, " \t\r\n"); len(b) == 0 || b[0] != '{' {
		return errors.New("decode JSON: value is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("decode JSON: trailing data after the object")
	}
	return nil
}

// DecodeClusterConfig parses and validates a cluster config stored at key.
func DecodeClusterConfig(key string, value []byte) (ClusterConfig, error) {
	var c ClusterConfig
	pk, err := ParseKey(key)
	if err != nil {
		return c, invalid(key, "", "not a cluster config key: %v", err)
	}
	if !pk.Config {
		return c, invalid(key, "", "not a cluster config key")
	}
	if err := decodeStrict(value, &c); err != nil {
		return ClusterConfig{}, invalid(key, "", "%v", err)
	}
	if c.Name != pk.Cluster {
		return ClusterConfig{}, invalid(key, "", "config names cluster %q, key names %q", c.Name, pk.Cluster)
	}
	if err := c.Validate(); err != nil {
		return ClusterConfig{}, invalid(key, "", "%v", err)
	}
	return c, nil
}

// parseOwned checks that key is a kind key under owner's prefix and returns
// its name part.
func parseOwned(owner *ClusterConfig, kind Kind, key string) (string, error) {
	pk, err := ParseKey(key)
	if err != nil {
		return "", invalid(key, kind, "%v", err)
	}
	if pk.Kind != kind {
		return "", invalid(key, kind, "not a %s key", kind)
	}
	if pk.Cluster != owner.Name {
		return "", invalid(key, kind, "key is under cluster %q, expected %q", pk.Cluster, owner.Name)
	}
	return pk.Name, nil
}

func checkCluster(key string, kind Kind, owner *ClusterConfig, claimed ClusterName) error {
	if claimed != owner.Name {
		return invalid(key, kind, "entry claims cluster %q but is under %q's prefix", claimed, owner.Name)
	}
	return nil
}

// DecodeNode parses and validates a node owned by owner.
func DecodeNode(owner *ClusterConfig, key string, value []byte) (Node, error) {
	name, err := parseOwned(owner, KindNodes, key)
	if err != nil {
		return Node{}, err
	}
	var n Node
	if !decodeNodeCanonical(value, &n, owner.Name) {
		if err := decodeStrict(value, &n); err != nil {
			return Node{}, invalid(key, KindNodes, "%v", err)
		}
	}
	if err := checkCluster(key, KindNodes, owner, n.Cluster); err != nil {
		return Node{}, err
	}
	if n.Name != name {
		return Node{}, invalid(key, KindNodes, "node names itself %q, key names %q", n.Name, name)
	}
	if err := validName("node name", n.Name, 253); err != nil {
		return Node{}, invalid(key, KindNodes, "%v", err)
	}
	if len(n.IPs) == 0 {
		return Node{}, invalid(key, KindNodes, "node has no IPs")
	}
	for _, ip := range n.IPs {
		if !ip.IsValid() {
			return Node{}, invalid(key, KindNodes, "invalid node IP")
		}
	}
	for _, p := range n.PodCIDRs {
		if err := validPrefix(p); err != nil {
			return Node{}, invalid(key, KindNodes, "pod CIDR: %v", err)
		}
		if !owner.ContainsPodIP(p) {
			return Node{}, invalid(key, KindNodes, "pod CIDR %s is outside cluster %q's pod CIDRs %v", p, owner.Name, owner.PodCIDRs)
		}
	}
	if n.WireGuardKey != "" && !validWireGuardKey(n.WireGuardKey) {
		return Node{}, invalid(key, KindNodes, "wireguardKey is not a base64 32-byte key")
	}
	if n.NextWireGuardKey != "" {
		if !validWireGuardKey(n.NextWireGuardKey) {
			return Node{}, invalid(key, KindNodes, "nextWireguardKey is not a base64 32-byte key")
		}
		if n.NextWireGuardKey == n.WireGuardKey {
			return Node{}, invalid(key, KindNodes, "nextWireguardKey equals wireguardKey")
		}
	}
	if len(n.PreparedWireGuardKeys) > MaxPreparedWireGuardKeys {
		return Node{}, invalid(key, KindNodes, "%d preparedWireguardKeys, more than %d", len(n.PreparedWireGuardKeys), MaxPreparedWireGuardKeys)
	}
	for _, k := range n.PreparedWireGuardKeys {
		if !validWireGuardKey(k) {
			return Node{}, invalid(key, KindNodes, "preparedWireguardKeys holds a value that is not a base64 32-byte key")
		}
	}
	return n, nil
}

// DecodeIdentity parses and validates an identity owned by owner; the ID
// must lie in owner's identity range.
func DecodeIdentity(owner *ClusterConfig, key string, value []byte) (Identity, error) {
	name, err := parseOwned(owner, KindIdentities, key)
	if err != nil {
		return Identity{}, err
	}
	var id Identity
	if !decodeIdentityCanonical(value, &id, owner.Name) {
		if err := decodeStrict(value, &id); err != nil {
			return Identity{}, invalid(key, KindIdentities, "%v", err)
		}
	}
	if err := checkCluster(key, KindIdentities, owner, id.Cluster); err != nil {
		return Identity{}, err
	}
	if strconv.FormatUint(uint64(id.ID), 10) != name {
		return Identity{}, invalid(key, KindIdentities, "identity %d stored under key name %q", id.ID, name)
	}
	if !owner.OwnsIdentity(id.ID) {
		first, last := owner.IdentityRange()
		return Identity{}, invalid(key, KindIdentities, "identity %d is outside cluster %q's range %d..%d (it belongs to cluster ID %d)", id.ID, owner.Name, first, last, id.ID.Cluster())
	}
	if len(id.Labels) == 0 {
		return Identity{}, invalid(key, KindIdentities, "identity %d has no labels", id.ID)
	}
	for k := range id.Labels {
		if k == "" {
			return Identity{}, invalid(key, KindIdentities, "identity %d has an empty label key", id.ID)
		}
	}
	return id, nil
}

// DecodeIPEntry parses and validates an IP entry owned by owner: its identity
// must be owner's and its prefix inside owner's pod CIDRs.
func DecodeIPEntry(owner *ClusterConfig, key string, value []byte) (IPEntry, error) {
	name, err := parseOwned(owner, KindIPs, key)
	if err != nil {
		return IPEntry{}, err
	}
	var e IPEntry
	if !decodeIPEntryCanonical(value, &e, owner.Name) {
		slow := new(IPEntry) // only this path's entry escapes
		if err := decodeStrict(value, slow); err != nil {
			return IPEntry{}, invalid(key, KindIPs, "%v", err)
		}
		e = *slow
	}
	if err := checkCluster(key, KindIPs, owner, e.Cluster); err != nil {
		return IPEntry{}, err
	}
	kp, err := parseIPKeyName(name)
	var text [64]byte // room for any prefix, so the comparison allocates nothing
	if err != nil || kp != e.Prefix || name != string(e.Prefix.AppendTo(text[:0])) {
		return IPEntry{}, invalid(key, KindIPs, "entry prefix %s does not match key name %q", e.Prefix, name)
	}
	if err := validPrefix(e.Prefix); err != nil {
		return IPEntry{}, invalid(key, KindIPs, "%v", err)
	}
	if !owner.ContainsPodIP(e.Prefix) {
		return IPEntry{}, invalid(key, KindIPs, "prefix %s is outside cluster %q's pod CIDRs %v", e.Prefix, owner.Name, owner.PodCIDRs)
	}
	if !owner.OwnsIdentity(e.Identity) {
		return IPEntry{}, invalid(key, KindIPs, "identity %d is outside cluster %q's range (it belongs to cluster ID %d)", e.Identity, owner.Name, e.Identity.Cluster())
	}
	if !e.HostIP.IsValid() {
		return IPEntry{}, invalid(key, KindIPs, "hostIP missing")
	}
	if len(e.NamedPorts) > MaxNamedPorts {
		return IPEntry{}, invalid(key, KindIPs, "%d named ports, at most %d allowed", len(e.NamedPorts), MaxNamedPorts)
	}
	for _, np := range e.NamedPorts {
		if np.Name == "" || len(np.Name) > 15 || np.Port == 0 {
			return IPEntry{}, invalid(key, KindIPs, "named port %q/%d: needs a name of 1 to 15 characters and a port in 1..65535", np.Name, np.Port)
		}
		switch np.Protocol {
		case TCP, UDP, SCTP:
		default:
			return IPEntry{}, invalid(key, KindIPs, "named port %q: protocol %q must be TCP, UDP or SCTP", np.Name, np.Protocol)
		}
	}
	return e, nil
}

// MaxBackendsPerService bounds how many backends one cluster may export for
// one service in the single-value layout (KindServices); a service with
// more is rejected whole, so a hostile writer cannot make every consumer
// allocate and program without bound. (A value is also capped at 1 MiB,
// which holds about 7,000 small backends.) It was 4096 before the chunked
// layout (KindServicesV2), which holds up to MaxChunkedBackends; publishers
// in the migration layout write larger services chunked only.
const MaxBackendsPerService = 8192

// DecodeService parses and validates a service owned by owner. Every
// backend must lie in owner's pod CIDRs; see DecodeServiceOnNodes for
// host-network backends.
func DecodeService(owner *ClusterConfig, key string, value []byte) (Service, error) {
	return DecodeServiceOnNodes(owner, nil, key, value)
}

// DecodeServiceOnNodes is DecodeService where a backend outside owner's pod
// CIDRs is also accepted when isNodeIP (if not nil) reports its address as
// one of the IPs of a node owner published (a host-network backend). No
// backend may appear twice, and there may be at most MaxBackendsPerService.
func DecodeServiceOnNodes(owner *ClusterConfig, isNodeIP func(netip.Addr) bool, key string, value []byte) (Service, error) {
	name, err := parseOwned(owner, KindServices, key)
	if err != nil {
		return Service{}, err
	}
	var s Service
	if !decodeServiceCanonical(value, &s, owner.Name) {
		if err := decodeStrict(value, &s); err != nil {
			return Service{}, invalid(key, KindServices, "%v", err)
		}
	}
	ports, err := validateService(owner, KindServices, key, name, &s)
	if err != nil {
		return Service{}, err
	}
	if err := s.Export.Validate(); err != nil {
		return Service{}, invalid(key, KindServices, "export: %v", err)
	}
	if err := validImport(owner, s.Import); err != nil {
		return Service{}, invalid(key, KindServices, "import: %v", err)
	}
	if !s.Shared && len(s.Backends) > 0 {
		return Service{}, invalid(key, KindServices, "service is not shared but exports %d backends", len(s.Backends))
	}
	if len(s.Backends) > MaxBackendsPerService {
		return Service{}, invalid(key, KindServices, "service exports %d backends, more than the limit of %d", len(s.Backends), MaxBackendsPerService)
	}
	if err := validateBackends(owner, isNodeIP, KindServices, key, ports, s.Backends, make(map[netip.Addr]bool, len(s.Backends))); err != nil {
		return Service{}, err
	}
	return s, nil
}

// validateService checks everything of s but its backends, stored at key
// with name part name, and returns its port names.
func validateService(owner *ClusterConfig, kind Kind, key, name string, s *Service) (map[string]bool, error) {
	if err := checkCluster(key, kind, owner, s.Cluster); err != nil {
		return nil, err
	}
	if err := validName("namespace", s.Namespace, 63); err != nil {
		return nil, invalid(key, kind, "%v", err)
	}
	if err := validName("service name", s.Name, 63); err != nil {
		return nil, invalid(key, kind, "%v", err)
	}
	if s.Namespace+"/"+s.Name != name {
		return nil, invalid(key, kind, "service %s stored under key name %q", s.NamespacedName(), name)
	}
	if _, err := ParseAffinity(string(s.Affinity)); err != nil || s.Affinity == "" {
		return nil, invalid(key, kind, "affinity %q: must be one of local, remote, none", s.Affinity)
	}
	if s.Topology != TopologyZone && s.Topology != TopologyRegion && s.Topology != TopologyNone {
		return nil, invalid(key, kind, "topology %q: must be one of zone, region or absent", s.Topology)
	}
	for _, ip := range s.ClusterIPs {
		if !ip.IsValid() {
			return nil, invalid(key, kind, "invalid cluster IP")
		}
		if !owner.ContainsServiceIP(ip) {
			return nil, invalid(key, kind, "cluster IP %s is outside cluster %q's service CIDRs %v", ip, owner.Name, owner.ServiceCIDRs)
		}
	}
	ports := make(map[string]bool, len(s.Ports))
	for _, p := range s.Ports {
		if p.Port == 0 {
			return nil, invalid(key, kind, "port %q is 0", p.Name)
		}
		switch p.Protocol {
		case TCP, UDP, SCTP:
		default:
			return nil, invalid(key, kind, "port %q: protocol %q must be TCP, UDP or SCTP", p.Name, p.Protocol)
		}
		if ports[p.Name] {
			return nil, invalid(key, kind, "port name %q appears twice", p.Name)
		}
		ports[p.Name] = true
	}
	return ports, nil
}

// validateBackends checks backends: valid IPs inside owner's pod CIDRs or
// (isNodeIP not nil) on its nodes, none in seen (each is added), ports
// non-zero, each named once and (ports not nil) one of ports.
func validateBackends(owner *ClusterConfig, isNodeIP func(netip.Addr) bool, kind Kind, key string, ports map[string]bool, backends []Backend, seen map[netip.Addr]bool) error {
	for _, b := range backends {
		if !b.IP.IsValid() {
			return invalid(key, kind, "backend with invalid IP")
		}
		if seen[b.IP] {
			return invalid(key, kind, "backend %s appears twice", b.IP)
		}
		seen[b.IP] = true
		if b.Hostname != "" && (len(b.Hostname) > 63 || !isDNSLabel(b.Hostname)) {
			return invalid(key, kind, "backend %s: hostname %q is not a DNS label (lowercase letters, digits and '-', at most 63)", b.IP, b.Hostname)
		}
		if !owner.ContainsPodIP(netip.PrefixFrom(b.IP, b.IP.BitLen())) && (isNodeIP == nil || !isNodeIP(b.IP)) {
			return invalid(key, kind, "backend %s is outside cluster %q's pod CIDRs %v and is not one of its node IPs", b.IP, owner.Name, owner.PodCIDRs)
		}
		for i, bp := range b.Ports {
			if ports != nil && !ports[bp.Name] {
				return invalid(key, kind, "backend %s names unknown port %q", b.IP, bp.Name)
			}
			if bp.Port == 0 {
				return invalid(key, kind, "backend %s port %q is 0", b.IP, bp.Name)
			}
			for _, prev := range b.Ports[:i] {
				if prev.Name == bp.Name {
					return invalid(key, kind, "backend %s gives port %q twice", b.IP, bp.Name)
				}
			}
		}
	}
	return nil
}

// SyncMarker is the value of a sync marker key.
type SyncMarker struct {
	// Entries is how many entries of the kind were published.
	Entries int `json:"entries"`
}

// DecodeSyncMarker parses a sync marker owned by owner and returns its kind.
func DecodeSyncMarker(owner *ClusterConfig, key string, value []byte) (Kind, SyncMarker, error) {
	var m SyncMarker
	pk, err := ParseKey(key)
	if err != nil {
		return "", m, invalid(key, "", "not a sync marker key: %v", err)
	}
	if !pk.Synced {
		return "", m, invalid(key, "", "not a sync marker key")
	}
	if pk.Cluster != owner.Name {
		return "", m, invalid(key, "", "sync marker is under cluster %q, expected %q", pk.Cluster, owner.Name)
	}
	if err := decodeStrict(value, &m); err != nil {
		return "", m, invalid(key, "", "%v", err)
	}
	if m.Entries < 0 {
		return "", SyncMarker{}, invalid(key, "", "negative entry count")
	}
	return Kind(pk.Name), m, nil
}

// MaxPreparedWireGuardKeys bounds Node.PreparedWireGuardKeys: a node
// acknowledges at most one pending key per peer.
const MaxPreparedWireGuardKeys = 1 << 16

// validWireGuardKey reports whether s is a WireGuard key in canonical
// base64, as `wg` prints it.
func validWireGuardKey(s string) bool {
	raw, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(raw) == 32 && base64.StdEncoding.EncodeToString(raw) == s
}
