package clustermesh

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"
)

// ClusterName is a cluster's name in the mesh: a DNS label of at most
// MaxClusterNameLen characters.
type ClusterName string

// MaxClusterNameLen bounds ClusterName.
const MaxClusterNameLen = 32

// isDNSLabel reports whether s matches ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$.
// Every key read from the store names a cluster: this runs for each of
// them, so it is a loop, not a regular expression.
func isDNSLabel(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// Validate reports why n is not a usable cluster name.
func (n ClusterName) Validate() error {
	if len(n) == 0 || len(n) > MaxClusterNameLen || !isDNSLabel(string(n)) {
		return fmt.Errorf("cluster name %q: must be a DNS label (lowercase letters, digits, '-') of 1 to %d characters", string(n), MaxClusterNameLen)
	}
	return nil
}

// ClusterID is a cluster's numeric ID, unique in the mesh, MinClusterID to
// MaxClusterID. It prefixes every identity the cluster allocates.
type ClusterID uint16

// Bounds of ClusterID.
const (
	MinClusterID ClusterID = 1
	MaxClusterID ClusterID = 511
)

// Validate reports why id is out of range.
func (id ClusterID) Validate() error {
	if id < MinClusterID || id > MaxClusterID {
		return fmt.Errorf("cluster ID %d: must be in %d..%d", id, MinClusterID, MaxClusterID)
	}
	return nil
}

// Capabilities are per-cluster settings other clusters and the datapath
// honour.
type Capabilities struct {
	// DefaultDeny makes identity policy deny traffic no rule allows.
	DefaultDeny bool `json:"defaultDeny,omitempty"`
	// StrictEncryption drops traffic to remote pods that would leave a node
	// outside the WireGuard tunnel.
	StrictEncryption bool `json:"strictEncryption,omitempty"`
	// IPv6 says the cluster runs IPv6 pods.
	IPv6 bool `json:"ipv6,omitempty"`
}

// ClusterConfig describes a member cluster. It is stored at ClusterKey.
type ClusterConfig struct {
	Name         ClusterName    `json:"name"`
	ID           ClusterID      `json:"id"`
	PodCIDRs     []netip.Prefix `json:"podCIDRs,omitempty"`
	ServiceCIDRs []netip.Prefix `json:"serviceCIDRs,omitempty"`
	Capabilities Capabilities   `json:"capabilities"`
}

// Validate checks the config on its own (not against other clusters).
func (c *ClusterConfig) Validate() error {
	if err := c.Name.Validate(); err != nil {
		return err
	}
	if err := c.ID.Validate(); err != nil {
		return err
	}
	for _, p := range c.PodCIDRs {
		if err := validPrefix(p); err != nil {
			return fmt.Errorf("pod CIDR: %w", err)
		}
	}
	for _, p := range c.ServiceCIDRs {
		if err := validPrefix(p); err != nil {
			return fmt.Errorf("service CIDR: %w", err)
		}
	}
	return nil
}

// IdentityRange returns the first and last identity the cluster may
// allocate: the cluster ID in the upper bits, 1..65535 below.
func (c *ClusterConfig) IdentityRange() (first, last NumericIdentity) {
	base := NumericIdentity(c.ID) << IdentityClusterShift
	return base + 1, base + 0xFFFF
}

// OwnsIdentity reports whether id lies in the cluster's identity range.
func (c *ClusterConfig) OwnsIdentity(id NumericIdentity) bool {
	first, last := c.IdentityRange()
	return id >= first && id <= last
}

// ContainsPodIP reports whether p lies inside one of the cluster's pod
// CIDRs. A cluster without pod CIDRs contains no prefix.
func (c *ClusterConfig) ContainsPodIP(p netip.Prefix) bool {
	for _, cidr := range c.PodCIDRs {
		if cidr.Bits() <= p.Bits() && cidr.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// ContainsServiceIP reports whether ip lies inside one of the cluster's
// service CIDRs. A cluster without service CIDRs contains no address.
func (c *ClusterConfig) ContainsServiceIP(ip netip.Addr) bool {
	for _, cidr := range c.ServiceCIDRs {
		if cidr.Contains(ip) {
			return true
		}
	}
	return false
}

// Node is one node of a cluster. It is stored at NodeKey.
type Node struct {
	Name    string       `json:"name"`
	Cluster ClusterName  `json:"cluster"`
	IPs     []netip.Addr `json:"ips"`
	// PodCIDRs are the pod ranges routed to this node.
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
	Zone     string         `json:"zone,omitempty"`
	Region   string         `json:"region,omitempty"`
	// WireGuardKey is the node's WireGuard public key, base64 as `wg` prints
	// it. Empty when the node has no tunnel yet.
	WireGuardKey string `json:"wireguardKey,omitempty"`
	// NextWireGuardKey is the public key the node will switch to (phase one
	// of its key handover, see package tunnel); empty when none is pending.
	NextWireGuardKey string `json:"nextWireguardKey,omitempty"`
	// PreparedWireGuardKeys are other nodes' next keys that this node has
	// installed: its acknowledgement that they may switch.
	PreparedWireGuardKeys []string `json:"preparedWireguardKeys,omitempty"`
	// BootID changes when the node reboots; peers use it to reset state.
	BootID string `json:"bootID,omitempty"`
}

// NumericIdentity is a security identity. The upper bits hold the cluster ID
// (see IdentityClusterShift), so identities are unique mesh-wide.
type NumericIdentity uint32

// IdentityClusterShift is how far the cluster ID is shifted in an identity.
const IdentityClusterShift = 16

// Cluster returns the cluster ID encoded in id.
func (id NumericIdentity) Cluster() ClusterID { return ClusterID(id >> IdentityClusterShift) }

// Labels of an identity that the operator derives rather than copies from
// the pod. A pod's own labels with these keys (or the namespace-label
// prefix) are dropped, so a pod cannot claim another namespace or cluster.
const (
	// LabelNamespace names the pod's namespace.
	LabelNamespace = "io.kubernetes.pod.namespace"
	// NamespaceLabelPrefix prefixes each label of the pod's namespace, as
	// Cilium spells it: namespace label team=a is identity label
	// io.cilium.k8s.namespace.labels.team=a.
	NamespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
	// LabelCluster is the cluster a peer selector may name. It is never
	// stored: policy evaluates it against Identity.Cluster.
	LabelCluster = "braid.dev/cluster"
	// LabelCiliumCluster is Cilium's spelling of LabelCluster, accepted
	// in selectors with the same meaning.
	LabelCiliumCluster = "io.cilium.k8s.policy.cluster"
)

// ReservedLabel reports whether k is a label key the operator derives; pod
// labels with such keys are not part of an identity.
func ReservedLabel(k string) bool {
	return k == LabelNamespace || k == LabelCluster || k == LabelCiliumCluster || strings.HasPrefix(k, NamespaceLabelPrefix)
}

// Identity is a label set with its numeric ID. It is stored at IdentityKey.
type Identity struct {
	ID      NumericIdentity   `json:"id"`
	Cluster ClusterName       `json:"cluster"`
	Labels  map[string]string `json:"labels"`
}

// IPEntry maps a prefix to the identity behind it and the node hosting it.
// It is stored at IPKey.
type IPEntry struct {
	Prefix   netip.Prefix    `json:"prefix"`
	Cluster  ClusterName     `json:"cluster"`
	Identity NumericIdentity `json:"identity"`
	// HostIP is the node IP traffic for Prefix is tunnelled to.
	HostIP netip.Addr `json:"hostIP"`
	// NamedPorts are the pod's named container ports, which policies may
	// name instead of numbers.
	NamedPorts []NamedPort `json:"namedPorts,omitempty"`
}

// NamedPort is a named container port of a pod.
type NamedPort struct {
	Name     string   `json:"name"`
	Port     uint16   `json:"port"`
	Protocol Protocol `json:"protocol"`
}

// MaxNamedPorts bounds IPEntry.NamedPorts.
const MaxNamedPorts = 64

// Affinity selects which backends a global service prefers.
type Affinity string

// Affinity values, with Cilium's semantics.
const (
	// AffinityNone spreads over every healthy backend.
	AffinityNone Affinity = "none"
	// AffinityLocal uses remote backends only when no local one is healthy.
	AffinityLocal Affinity = "local"
	// AffinityRemote uses local backends only when no remote one is healthy.
	AffinityRemote Affinity = "remote"
)

// ParseAffinity accepts "", "none", "local" and "remote" ("" is none).
func ParseAffinity(s string) (Affinity, error) {
	switch Affinity(s) {
	case "", AffinityNone:
		return AffinityNone, nil
	case AffinityLocal, AffinityRemote:
		return Affinity(s), nil
	}
	return "", fmt.Errorf("affinity %q: must be one of local, remote, none", s)
}

// Topology is how strongly a global service prefers backends close to the
// client's node. Without a preference the backends an affinity selects are
// used evenly.
type Topology string

// Topology values.
const (
	// TopologyNone uses the backends the affinity selects evenly.
	TopologyNone Topology = ""
	// TopologyZone prefers, in order, backends on the client's node, in its
	// zone, in its cluster, in its region, then anywhere (Kubernetes'
	// spec.trafficDistribution PreferClose, or braid.dev/topology: zone).
	TopologyZone Topology = "zone"
	// TopologyRegion prefers the client's cluster, then its region, then
	// anywhere (braid.dev/topology: region).
	TopologyRegion Topology = "region"
)

// ParseTopology accepts "", "none", "zone" and "region" ("" and "none" are
// TopologyNone).
func ParseTopology(s string) (Topology, error) {
	switch Topology(s) {
	case "", "none":
		return TopologyNone, nil
	case TopologyZone, TopologyRegion:
		return Topology(s), nil
	}
	return "", fmt.Errorf("topology %q: must be one of zone, region, none", s)
}

// Protocol is a transport protocol of a service port.
type Protocol string

// Protocols a service port may use.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// ServicePort is one port of a service.
type ServicePort struct {
	Name     string   `json:"name,omitempty"`
	Port     uint16   `json:"port"`
	Protocol Protocol `json:"protocol"`
}

// Backend is one endpoint of a service.
type Backend struct {
	IP netip.Addr `json:"ip"`
	// Ports gives, per service port name ("" for an unnamed port), the port
	// the backend listens on. A slice, not a map: a large mesh holds
	// hundreds of thousands of backends.
	Ports []BackendPort `json:"ports"`
	Node  string        `json:"node,omitempty"`
	Zone  string        `json:"zone,omitempty"`
	// Hostname is the endpoint's hostname (a StatefulSet pod's, under a
	// headless service): a DNS label, answered as
	// <hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local.
	Hostname    string `json:"hostname,omitempty"`
	Ready       bool   `json:"ready"`
	Serving     bool   `json:"serving"`
	Terminating bool   `json:"terminating,omitempty"`
}

// BackendPort is the port a backend listens on for the service port Name.
type BackendPort struct {
	Name string `json:"name,omitempty"`
	Port uint16 `json:"port"`
}

// Port returns the port the backend listens on for service port name.
func (b *Backend) Port(name string) (uint16, bool) {
	for _, p := range b.Ports {
		if p.Name == name {
			return p.Port, true
		}
	}
	return 0, false
}

// Service is a global service as one cluster sees it: its ports and the
// backends this cluster contributes. It is stored at ServiceKey.
type Service struct {
	Cluster   ClusterName `json:"cluster"`
	Namespace string      `json:"namespace"`
	Name      string      `json:"name"`
	Global    bool        `json:"global"`
	// Shared false means the cluster consumes remote backends but exports
	// none of its own: Backends is then empty.
	Shared   bool     `json:"shared"`
	Affinity Affinity `json:"affinity"`
	// Topology is the service's preference for close backends.
	Topology Topology `json:"topology,omitempty"`
	Headless bool     `json:"headless,omitempty"`
	// ClusterIPs are the service's virtual IPs in the publishing cluster;
	// agents of that cluster serve the mesh's backends on them. Other
	// clusters use their own service's addresses.
	ClusterIPs []netip.Addr  `json:"clusterIPs,omitempty"`
	Ports      []ServicePort `json:"ports"`
	Backends   []Backend     `json:"backends,omitempty"`
	// ExportedAt is when the cluster's MCS ServiceExport for the service
	// was created; zero when the service is global by annotation only.
	// Clusters resolve ServiceImport conflicts by it (KEP-1645: the oldest
	// export wins, ties broken by cluster name).
	ExportedAt time.Time `json:"exportedAt,omitzero"`
	// Export is what a ServiceImport takes from the cluster's export
	// (KEP-1645); nil when the service is not exported with a
	// ServiceExport.
	Export *ExportSpec `json:"export,omitempty"`
	// Import is the cluster's own ServiceImport of the service: agents of
	// the publishing cluster serve its ClusterSetIPs with the backends of
	// every exporting cluster. Other clusters ignore it. Nil when the
	// cluster imports no ClusterSetIP service of that name.
	Import *ImportSpec `json:"import,omitempty"`
}

// ExportSpec is the part of an exported service that its ServiceImport
// takes from the oldest export, and that exports must agree on.
type ExportSpec struct {
	// SessionAffinity is "None" or "ClientIP"; SessionAffinityTimeout the
	// ClientIP timeout in seconds (0: unset).
	SessionAffinity        string `json:"sessionAffinity,omitempty"`
	SessionAffinityTimeout int32  `json:"sessionAffinityTimeout,omitempty"`
	// InternalTrafficPolicy is "Cluster" or "Local"; empty when unset.
	InternalTrafficPolicy string `json:"internalTrafficPolicy,omitempty"`
	// TrafficDistribution is the service's spec.trafficDistribution.
	TrafficDistribution string `json:"trafficDistribution,omitempty"`
	// IPFamilies are the service's families, "IPv4" or "IPv6".
	IPFamilies []string `json:"ipFamilies,omitempty"`
	// Labels and Annotations are the ServiceExport's exportedLabels and
	// exportedAnnotations: the only ones a ServiceImport carries.
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ImportSpec is a cluster's ClusterSetIP ServiceImport as its agents serve
// it.
type ImportSpec struct {
	// IPs are the ClusterSetIPs, one per family, from the cluster's
	// clusterset range (inside its granted service CIDRs).
	IPs []netip.Addr `json:"ips"`
	// Ports are the import's ports: the union across exporting clusters.
	Ports []ServicePort `json:"ports"`
	// Clusters are the exporting clusters whose backends serve each port:
	// for a port name, the clusters whose export defines it as in Ports.
	Clusters map[string][]ClusterName `json:"clusters,omitempty"`
}

// NamespacedName is "namespace/name".
func (s *Service) NamespacedName() string { return s.Namespace + "/" + s.Name }

func validPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix")
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("prefix %s is IPv4-mapped IPv6; use the IPv4 form %s", p, netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0)).Masked())
	}
	if p.Masked() != p {
		return fmt.Errorf("prefix %s has host bits set (use %s)", p, p.Masked())
	}
	return nil
}

// validName checks a Kubernetes-style object name component used in keys.
func validName(what, s string, max int) error {
	if s == "" || len(s) > max {
		return fmt.Errorf("%s %q: must be 1 to %d characters", what, s, max)
	}
	for _, r := range s {
		if r == '/' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("%s %q: must not contain '/', spaces or control characters", what, s)
		}
	}
	return nil
}

// Overlaps returns the pairs of prefixes in a and b that overlap.
func Overlaps(a, b []netip.Prefix) [][2]netip.Prefix {
	var out [][2]netip.Prefix
	for _, x := range a {
		for _, y := range b {
			if x.Overlaps(y) {
				out = append(out, [2]netip.Prefix{x, y})
			}
		}
	}
	return out
}

// ParsePrefixes parses CIDRs given with flag, naming the flag and the value
// in its error. Each must be canonical (no host bits).
func ParsePrefixes(flag string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", flag, s, err)
		}
		if err := validPrefix(p); err != nil {
			return nil, fmt.Errorf("%s %q: %w", flag, s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Bounds of a lease TTL. A TTL below MinLeaseTTL leaves too little time to
// renew; a broker refuses leases longer than MaxLeaseTTL, since a dead
// cluster's entries stay until its lease expires.
const (
	MinLeaseTTL = time.Second
	MaxLeaseTTL = 10 * time.Minute
)

// ValidateLeaseTTL reports why d is not a usable lease TTL.
func ValidateLeaseTTL(d time.Duration) error {
	if d < MinLeaseTTL || d > MaxLeaseTTL {
		return fmt.Errorf("lease TTL %v: must be between %v and %v", d, MinLeaseTTL, MaxLeaseTTL)
	}
	return nil
}
