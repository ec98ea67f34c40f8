package k8s

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"github.com/braidmesh/braid/clustermesh"
)

// adoptImports seeds the imports mesh_to_kube decided with the Import of
// the records this cluster published before the restart, before the first
// service set is handed over. mesh_to_kube only runs after that handover
// and decides from a remote view that may still be partial: without the
// seed, the first records of a restarted operator lack their Import, and
// the cluster's agents stop serving every ClusterSetIP until mesh_to_kube
// has caught up. An Import is adopted only while its ServiceImport and
// derived Service are still ours and the derived Service holds its
// ClusterSetIPs; mesh_to_kube corrects the rest on its first pass. A
// broker that cannot be read leaves nothing adopted (nothing can be
// published then either).
func (s *Source) adoptImports(ctx context.Context) {
	if !s.mcsOn || s.imports == nil || s.alloc == nil {
		return
	}
	owner := &s.cfg.Cluster
	trusted := func(netip.Addr) bool { return true } // our own records: only their Import is used
	adopted := 0
	for _, kind := range []clustermesh.Kind{clustermesh.KindServices, clustermesh.KindServicesV2} {
		prefix := clustermesh.KindPrefix(kind, owner.Name)
		kvs, _, err := s.alloc.store.List(ctx, prefix)
		if err != nil {
			s.log.Warn("cannot read the published services to adopt their imports", "kind", kind, "err", err)
			return
		}
		for _, kv := range kvs {
			var svc clustermesh.Service
			switch kind {
			case clustermesh.KindServices:
				svc, err = clustermesh.DecodeServiceOnNodes(owner, trusted, kv.Key, kv.Value)
			default:
				if _, chunk, ok := clustermesh.SplitServicesV2Name(strings.TrimPrefix(kv.Key, prefix)); !ok || chunk != "" {
					continue // a chunk of backends, not a header
				}
				var h clustermesh.ServiceHeader
				h, err = clustermesh.DecodeServiceHeader(owner, kv.Key, kv.Value)
				svc = h.Service
			}
			if err != nil {
				s.log.Debug("not adopting the import of an invalid published service", "err", err)
				continue
			}
			if svc.Import != nil && s.adoptImport(svc.Namespace, svc.Name, svc.Import) {
				adopted++
			}
		}
	}
	if adopted > 0 {
		s.log.Info("adopted the imports of the published services", "imports", adopted)
	}
}

// adoptImport records im as the import of ns/name if the cluster still
// holds it as published.
func (s *Source) adoptImport(ns, name string, im *clustermesh.ImportSpec) bool {
	key := ns + "/" + name
	si, err := s.imports.ServiceImports(ns).Get(name)
	if err != nil || si.Labels[LabelManagedBy] != managedByValue {
		return false
	}
	dname := derivedName(name)
	d, err := s.services.Services(ns).Get(dname)
	if err != nil {
		return false
	}
	if _, ours := importedKey(d); !ours {
		return false
	}
	have := clusterIPs(d)
	for _, ip := range im.IPs {
		if !slices.Contains(have, ip) || !s.inClusterSet(ip) {
			return false
		}
	}
	clusters := make(map[string][]clustermesh.ClusterName, len(im.Clusters))
	for p, cs := range im.Clusters {
		clusters[p] = slices.Clone(cs)
	}
	s.localMu.Lock()
	defer s.localMu.Unlock()
	if s.imported[key] != nil {
		return false // mesh_to_kube decided already
	}
	s.imported[key] = &imported{derived: dname, ports: slices.Clone(im.Ports), clusters: clusters}
	return true
}
