package sim

import (
	"fmt"
	"net/netip"

	"github.com/braidmesh/braid/clustermesh"
)

// Generate builds a plausible state for a cluster without
// Kubernetes: nodes spread over three zones, each with a /24 of the
// cluster's first pod CIDR, podsPerNode pods per node, one identity per
// app and the given global services, each backed by one pod per node. It is
// the demo's and the tests' stand-in for a real cluster. The cluster needs
// an IPv4 pod CIDR of /16 or wider.
func Generate(cfg clustermesh.ClusterConfig, nodes, podsPerNode int, services []string) (State, error) {
	var s State
	if len(cfg.PodCIDRs) == 0 || !cfg.PodCIDRs[0].Addr().Is4() || cfg.PodCIDRs[0].Bits() > 16 {
		return s, fmt.Errorf("simulate cluster %s: needs an IPv4 pod CIDR of /16 or wider", cfg.Name)
	}
	if nodes > 250 || podsPerNode > 250 {
		return s, fmt.Errorf("simulate cluster %s: at most 250 nodes and 250 pods per node", cfg.Name)
	}
	base := cfg.PodCIDRs[0].Addr().As4()
	first, _ := cfg.IdentityRange()
	apps := append([]string{"client"}, services...)
	idOf := map[string]clustermesh.NumericIdentity{}
	for i, app := range apps {
		id := first + clustermesh.NumericIdentity(i)
		idOf[app] = id
		s.Identities = append(s.Identities, clustermesh.Identity{ID: id, Cluster: cfg.Name,
			Labels: map[string]string{"app": app, "io.kubernetes.pod.namespace": "default"}})
	}
	backends := map[string][]clustermesh.Backend{}
	for n := range nodes {
		name := fmt.Sprintf("%s-node-%d", cfg.Name, n)
		zone := fmt.Sprintf("zone-%c", 'a'+n%3)
		nodeIP := netip.AddrFrom4([4]byte{192, 168, byte(cfg.ID), byte(n + 1)})
		podCIDR := netip.PrefixFrom(netip.AddrFrom4([4]byte{base[0], base[1], byte(n), 0}), 24)
		s.Nodes = append(s.Nodes, clustermesh.Node{Name: name, Cluster: cfg.Name, IPs: []netip.Addr{nodeIP},
			PodCIDRs: []netip.Prefix{podCIDR}, Zone: zone, Region: "region-1", BootID: fmt.Sprintf("boot-%s-%d", cfg.Name, n)})
		for p := range podsPerNode {
			app := apps[p%len(apps)]
			ip := netip.AddrFrom4([4]byte{base[0], base[1], byte(n), byte(p + 1)})
			s.IPs = append(s.IPs, clustermesh.IPEntry{Prefix: netip.PrefixFrom(ip, 32), Cluster: cfg.Name, Identity: idOf[app], HostIP: nodeIP})
			if app != "client" && p < len(apps) {
				backends[app] = append(backends[app], clustermesh.Backend{IP: ip, Ports: []clustermesh.BackendPort{{Name: "http", Port: 8080}},
					Node: name, Zone: zone, Ready: true, Serving: true})
			}
		}
	}
	for _, svc := range services {
		s.Services = append(s.Services, clustermesh.Service{Cluster: cfg.Name, Namespace: "default", Name: svc,
			Global: true, Shared: true, Affinity: clustermesh.AffinityNone,
			Ports:    []clustermesh.ServicePort{{Name: "http", Port: 80, Protocol: clustermesh.TCP}},
			Backends: backends[svc]})
	}
	return s, nil
}
