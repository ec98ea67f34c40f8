package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/datapath"
	"github.com/braidmesh/braid/clustermesh/remote"
)

// DesiredState computes what the datapath must hold on a node of cluster
// local: the ipcache from every cluster's IP entries, and for each global
// service the local cluster publishes with cluster IPs, one datapath
// service per port whose backends are the local cluster's plus every remote
// cluster's that shares the service. A backend is healthy when it is ready,
// or serving and not terminating; it is marked NodeUnreachable when
// unreachable (may be nil) says so of its node. Gossip affects nothing else:
// an unreachable node keeps its ipcache entries and its cluster's services.
func DesiredState(snap *remote.Snapshot, local clustermesh.ClusterName, unreachable func(clustermesh.ClusterName, string) bool) datapath.Desired {
	var want datapath.Desired
	want.ClusterIDs = make(map[clustermesh.ClusterName]clustermesh.ClusterID, len(snap.Clusters))
	names := make([]clustermesh.ClusterName, 0, len(snap.Clusters))
	ips := 0
	for name, cs := range snap.Clusters {
		names = append(names, name)
		want.ClusterIDs[name] = cs.Config.ID
		ips += len(cs.IPs)
	}
	slices.Sort(names)
	// Hundreds of thousands of entries in a large mesh: grow once.
	want.IPCache = make([]clustermesh.IPEntry, 0, ips)
	for _, name := range names {
		for _, e := range snap.Clusters[name].IPs {
			want.IPCache = append(want.IPCache, e)
		}
	}
	slices.SortFunc(want.IPCache, func(a, b clustermesh.IPEntry) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), a.Prefix.Bits()-b.Prefix.Bits())
	})

	own := snap.Clusters[local]
	if own == nil {
		return want
	}
	want.DefaultDeny = own.Config.Capabilities.DefaultDeny
	svcNames := make([]string, 0, len(own.Services))
	for n := range own.Services {
		svcNames = append(svcNames, n)
	}
	slices.Sort(svcNames)
	for _, n := range svcNames {
		svc := own.Services[n]
		if svc.Global && svc.Import != nil {
			want.Services = append(want.Services, importServices(snap, local, n, names, svc, unreachable)...)
		}
		if !svc.Global || svc.Headless || len(svc.ClusterIPs) == 0 {
			continue
		}
		for _, port := range svc.Ports {
			// One datapath service per port and address family: a socket
			// connected over IPv4 can only be given an IPv4 backend.
			for _, v4 := range []bool{true, false} {
				ds := datapath.Service{
					Name:     fmt.Sprintf("%s/%s:%s/%s", local, n, portName(port), family(v4)),
					Affinity: svc.Affinity,
					Topology: svc.Topology,
				}
				for _, ip := range svc.ClusterIPs {
					if ip.Is4() == v4 {
						ds.Frontends = append(ds.Frontends, datapath.Frontend{Addr: netip.AddrPortFrom(ip, port.Port), Protocol: port.Protocol})
					}
				}
				if len(ds.Frontends) == 0 {
					continue
				}
				for _, cname := range names {
					other, ok := snap.Clusters[cname].Services[n]
					if !ok || (cname != local && !other.Shared) {
						continue
					}
					ds.Backends = appendBackends(ds.Backends, snap, cname, other, port.Name, v4, unreachable)
				}
				want.Services = append(want.Services, ds)
			}
		}
	}
	return want
}

// importServices are the datapath services of the local cluster's
// ClusterSetIP import of n: one per import port and family, on the
// ClusterSetIPs, whose backends are those of the clusters the import names
// for the port (the exporting clusters that define it as the import does).
func importServices(snap *remote.Snapshot, local clustermesh.ClusterName, n string, names []clustermesh.ClusterName, svc clustermesh.Service, unreachable func(clustermesh.ClusterName, string) bool) []datapath.Service {
	var out []datapath.Service
	for _, port := range svc.Import.Ports {
		for _, v4 := range []bool{true, false} {
			ds := datapath.Service{
				Name:     fmt.Sprintf("%s/%s:%s/%s/clusterset", local, n, portName(port), family(v4)),
				Affinity: clustermesh.AffinityNone,
			}
			for _, ip := range svc.Import.IPs {
				if ip.Is4() == v4 {
					ds.Frontends = append(ds.Frontends, datapath.Frontend{Addr: netip.AddrPortFrom(ip, port.Port), Protocol: port.Protocol})
				}
			}
			if len(ds.Frontends) == 0 {
				continue
			}
			for _, cname := range names {
				if !slices.Contains(svc.Import.Clusters[port.Name], cname) {
					continue
				}
				other, ok := snap.Clusters[cname].Services[n]
				if !ok || !other.Shared || other.ExportedAt.IsZero() {
					continue
				}
				ds.Backends = appendBackends(ds.Backends, snap, cname, other, port.Name, v4, unreachable)
			}
			out = append(out, ds)
		}
	}
	return out
}

// appendBackends appends to out the backends of cluster cname's service svc
// that serve the port named port in the address family v4 selects, with
// their node's topology and health.
func appendBackends(out []datapath.Backend, snap *remote.Snapshot, cname clustermesh.ClusterName, svc clustermesh.Service, port string, v4 bool, unreachable func(clustermesh.ClusterName, string) bool) []datapath.Backend {
	for _, b := range svc.Backends {
		target, ok := b.Port(port)
		if !ok || b.IP.Is4() != v4 {
			continue
		}
		out = append(out, datapath.Backend{
			Addr:            netip.AddrPortFrom(b.IP, target),
			Cluster:         cname,
			Node:            b.Node,
			Zone:            b.Zone,
			Region:          snap.Clusters[cname].Nodes[b.Node].Region,
			Healthy:         b.Ready || (b.Serving && !b.Terminating),
			NodeUnreachable: unreachable != nil && b.Node != "" && unreachable(cname, b.Node),
		})
	}
	return out
}

func family(v4 bool) string {
	if v4 {
		return "v4"
	}
	return "v6"
}

func portName(p clustermesh.ServicePort) string {
	if p.Name != "" {
		return p.Name
	}
	return fmt.Sprint(p.Port)
}
