package sim

import (
	"fmt"
	"net/netip"

	"github.com/braidmesh/braid/clustermesh"
)

// Generate builds a plausible state for a cluster without
// Kubernetes: nodes spread over three zones, each with the next /24 of the
// cluster's first pod CIDR, podsPerNode pods per node, one identity per
// app and the given global services, each backed by one pod per node. It is
// the demo's and the tests' stand-in for a real cluster. The cluster needs
// an IPv4 first pod CIDR with a /24 for every node (a /16 holds 250 nodes,
// a /19 32). Node n's IP is NodeIP(cfg.ID, n).
func Generate(cfg clustermesh.ClusterConfig, nodes, podsPerNode int, services []string) (State, error) {
	var s State
	if nodes > 250 || podsPerNode > 250 {
		return s, fmt.Errorf("simulate cluster %s: at most 250 nodes and 250 pods per node", cfg.Name)
	}
	if len(cfg.PodCIDRs) == 0 || !cfg.PodCIDRs[0].Addr().Is4() || cfg.PodCIDRs[0].Bits() > 24 || 1<<(24-cfg.PodCIDRs[0].Bits()) < nodes {
		return s, fmt.Errorf("simulate cluster %s: needs an IPv4 pod CIDR with a /24 for each of its %d nodes", cfg.Name, nodes)
	}
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
		nodeIP := NodeIP(cfg.ID, n)
		podCIDR := NodePodCIDR(cfg.PodCIDRs[0], n)
		s.Nodes = append(s.Nodes, clustermesh.Node{Name: name, Cluster: cfg.Name, IPs: []netip.Addr{nodeIP},
			PodCIDRs: []netip.Prefix{podCIDR}, Zone: zone, Region: "region-1", BootID: fmt.Sprintf("boot-%s-%d", cfg.Name, n)})
		for p := range podsPerNode {
			app := apps[p%len(apps)]
			ip := PodIP(podCIDR, p)
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

// NodeIP is the IP Generate gives node n (0..249) of cluster id:
// 192.168.id.n+1 for IDs up to 255, 172.16+id/256.id%256.n+1 above, so
// that every cluster of the ID space has its own.
func NodeIP(id clustermesh.ClusterID, n int) netip.Addr {
	if id <= 255 {
		return netip.AddrFrom4([4]byte{192, 168, byte(id), byte(n + 1)})
	}
	return netip.AddrFrom4([4]byte{172, byte(16 + id>>8), byte(id), byte(n + 1)})
}

// NodePodCIDR is node n's pod range in Generate: the n-th /24 of the
// cluster's pod CIDR.
func NodePodCIDR(clusterCIDR netip.Prefix, n int) netip.Prefix {
	a := clusterCIDR.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 + uint32(n)<<8
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24)
}

// PodIP is pod p (0..253) of a node with pod range nodeCIDR (a /24): its
// p+1-th address.
func PodIP(nodeCIDR netip.Prefix, p int) netip.Addr {
	a := nodeCIDR.Addr().As4()
	return netip.AddrFrom4([4]byte{a[0], a[1], a[2], byte(p + 1)})
}
