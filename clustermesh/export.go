package clustermesh

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"
)

// Limits on what an export may carry into other clusters' ServiceImports.
const (
	maxExportedMetadata    = 64                    // labels, and annotations, per export
	maxExportedKey         = 317                   // a qualified name with a DNS prefix
	maxExportedLabelValue  = 63                    // Kubernetes' label value limit
	maxExportedAnnotations = 64 << 10              // bytes of annotation keys and values
	maxAffinityTimeout     = 24 * 60 * 60          // Kubernetes' ClientIP timeout limit
	maxTrafficDistribution = 63                    // a qualified name
	maxImportIPs           = 2                     // one per family
	maxImportClusters      = int(MaxClusterID) + 1 // every cluster of a mesh
	maxImportPorts         = 256                   // more than a Service may have
	ipv4Family, ipv6Family = "IPv4", "IPv6"        // Kubernetes' IPFamily values
	affinityNone, clientIP = "None", "ClientIP"    // Kubernetes' ServiceAffinity values
	policyCluster, local   = "Cluster", "Local"    // Kubernetes' traffic policies
)

// Validate checks an export spec as other clusters will: nil is valid.
func (e *ExportSpec) Validate() error {
	if e == nil {
		return nil
	}
	switch e.SessionAffinity {
	case "", affinityNone, clientIP:
	default:
		return fmt.Errorf("session affinity %q: must be None or ClientIP", e.SessionAffinity)
	}
	if e.SessionAffinityTimeout < 0 || e.SessionAffinityTimeout > maxAffinityTimeout {
		return fmt.Errorf("session affinity timeout %d: must be 0 to %d seconds", e.SessionAffinityTimeout, maxAffinityTimeout)
	}
	switch e.InternalTrafficPolicy {
	case "", policyCluster, local:
	default:
		return fmt.Errorf("internal traffic policy %q: must be Cluster or Local", e.InternalTrafficPolicy)
	}
	if len(e.TrafficDistribution) > maxTrafficDistribution || !printable(e.TrafficDistribution) {
		return fmt.Errorf("traffic distribution %q: must be at most %d printable characters", e.TrafficDistribution, maxTrafficDistribution)
	}
	if len(e.IPFamilies) > 2 {
		return fmt.Errorf("%d IP families: at most 2", len(e.IPFamilies))
	}
	for i, f := range e.IPFamilies {
		if f != ipv4Family && f != ipv6Family || i == 1 && e.IPFamilies[0] == f {
			return fmt.Errorf("IP families %v: must be IPv4 and/or IPv6, each once", e.IPFamilies)
		}
	}
	if len(e.Labels) > maxExportedMetadata || len(e.Annotations) > maxExportedMetadata {
		return fmt.Errorf("%d labels and %d annotations: at most %d each", len(e.Labels), len(e.Annotations), maxExportedMetadata)
	}
	for k, v := range e.Labels {
		if err := validMetadataKey(k); err != nil {
			return fmt.Errorf("label %w", err)
		}
		if len(v) > maxExportedLabelValue || !printable(v) || strings.ContainsRune(v, ' ') {
			return fmt.Errorf("label %q: value must be at most %d printable characters without spaces", k, maxExportedLabelValue)
		}
	}
	size := 0
	for k, v := range e.Annotations {
		if err := validMetadataKey(k); err != nil {
			return fmt.Errorf("annotation %w", err)
		}
		size += len(k) + len(v)
	}
	if size > maxExportedAnnotations {
		return fmt.Errorf("annotations are %d bytes: at most %d", size, maxExportedAnnotations)
	}
	return nil
}

func validMetadataKey(k string) error {
	if k == "" || len(k) > maxExportedKey || !printable(k) || strings.ContainsRune(k, ' ') {
		return fmt.Errorf("key %q: must be 1 to %d printable characters without spaces", k, maxExportedKey)
	}
	return nil
}

func printable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// validImport checks the owner's own import: its IPs must lie in the
// owner's service CIDRs (the clusterset range is carved from them) and
// outside its pod CIDRs.
func validImport(owner *ClusterConfig, im *ImportSpec) error {
	if im == nil {
		return nil
	}
	if len(im.IPs) == 0 || len(im.IPs) > maxImportIPs {
		return fmt.Errorf("%d ClusterSetIPs: want 1 or 2 (one per family)", len(im.IPs))
	}
	for i, ip := range im.IPs {
		if !ip.IsValid() || ip.Is4In6() || !ip.IsGlobalUnicast() && !ip.IsPrivate() {
			return fmt.Errorf("ClusterSetIP %v is not a unicast address", ip)
		}
		if i == 1 && im.IPs[0].Is4() == ip.Is4() {
			return fmt.Errorf("ClusterSetIPs %v: one per family", im.IPs)
		}
		if !owner.ContainsServiceIP(ip) {
			return fmt.Errorf("ClusterSetIP %s is outside cluster %q's service CIDRs %v", ip, owner.Name, owner.ServiceCIDRs)
		}
		if owner.ContainsPodIP(netip.PrefixFrom(ip, ip.BitLen())) {
			return fmt.Errorf("ClusterSetIP %s is inside cluster %q's pod CIDRs %v", ip, owner.Name, owner.PodCIDRs)
		}
	}
	if len(im.Ports) > maxImportPorts {
		return fmt.Errorf("%d ports: at most %d", len(im.Ports), maxImportPorts)
	}
	names := map[string]bool{}
	for _, p := range im.Ports {
		if p.Port == 0 {
			return fmt.Errorf("port %q is 0", p.Name)
		}
		switch p.Protocol {
		case TCP, UDP, SCTP:
		default:
			return fmt.Errorf("port %q: protocol %q must be TCP, UDP or SCTP", p.Name, p.Protocol)
		}
		if names[p.Name] {
			return fmt.Errorf("port name %q appears twice", p.Name)
		}
		names[p.Name] = true
	}
	for name, cs := range im.Clusters {
		if !names[name] {
			return fmt.Errorf("clusters given for unknown port %q", name)
		}
		if len(cs) > maxImportClusters {
			return fmt.Errorf("port %q: %d clusters, more than %d", name, len(cs), maxImportClusters)
		}
		for _, c := range cs {
			if err := c.Validate(); err != nil {
				return fmt.Errorf("port %q: %w", name, err)
			}
		}
	}
	return nil
}
