package k8s

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/braidmesh/braid/clustermesh"
)

// Topology labels nodes carry; the deprecated beta spellings are a
// fallback.
const (
	labelZone       = "topology.kubernetes.io/zone"
	labelRegion     = "topology.kubernetes.io/region"
	labelZoneBeta   = "failure-domain.beta.kubernetes.io/zone"
	labelRegionBeta = "failure-domain.beta.kubernetes.io/region"
	// AnnotationWireGuardKey, on a Node, is the node's WireGuard public key
	// as set by its agent.
	AnnotationWireGuardKey = "braid.dev/wireguard-public-key"
	// AnnotationWireGuardNextKey, on a Node, is the public key its agent
	// will switch to (its key handover's first phase); absent when none.
	AnnotationWireGuardNextKey = "braid.dev/wireguard-next-public-key"
	// AnnotationWireGuardPrepared, on a Node, lists (comma-separated) other
	// nodes' next keys its agent has installed.
	AnnotationWireGuardPrepared = "braid.dev/wireguard-prepared-keys"
)

// noIdentityLabels carry no identity: they differ between pods of one
// workload (hashes, indexes, names).
var noIdentityLabels = map[string]bool{
	"pod-template-hash":                        true,
	"controller-revision-hash":                 true,
	"pod-template-generation":                  true,
	"statefulset.kubernetes.io/pod-name":       true,
	"apps.kubernetes.io/pod-index":             true,
	"controller-uid":                           true,
	"batch.kubernetes.io/controller-uid":       true,
	"batch.kubernetes.io/job-completion-index": true,
}

func first(m map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := m[k]; v != "" {
			return v
		}
	}
	return ""
}

// nodeRecord turns a Node into a mesh record; ok is false when it has no
// usable IP.
func (s *Source) nodeRecord(n *corev1.Node) (*clustermesh.Node, bool) {
	rec := &clustermesh.Node{
		Name:    n.Name,
		Cluster: s.cfg.Cluster.Name,
		Zone:    first(n.Labels, labelZone, labelZoneBeta),
		Region:  first(n.Labels, labelRegion, labelRegionBeta),
		BootID:  n.Status.NodeInfo.BootID,
	}
	for _, want := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != want {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil && !slices.Contains(rec.IPs, ip.Unmap()) {
				rec.IPs = append(rec.IPs, ip.Unmap())
			}
		}
		if len(rec.IPs) > 0 {
			break // external IPs only when a node has no internal one
		}
	}
	if len(rec.IPs) == 0 {
		return nil, false
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Masked() != p || !s.cfg.Cluster.ContainsPodIP(p) {
			s.log.Warn("node pod CIDR not published: invalid or outside the cluster's pod CIDRs", "node", n.Name, "cidr", c)
			continue
		}
		rec.PodCIDRs = append(rec.PodCIDRs, p)
	}
	if k := n.Annotations[AnnotationWireGuardKey]; k != "" {
		if raw, err := base64.StdEncoding.DecodeString(k); err == nil && len(raw) == 32 {
			rec.WireGuardKey = k
		}
	}
	if k := n.Annotations[AnnotationWireGuardNextKey]; k != "" && rec.WireGuardKey != "" && k != rec.WireGuardKey {
		if raw, err := base64.StdEncoding.DecodeString(k); err == nil && len(raw) == 32 {
			rec.NextWireGuardKey = k
		}
	}
	if v := n.Annotations[AnnotationWireGuardPrepared]; v != "" {
		for k := range strings.SplitSeq(v, ",") {
			if raw, err := base64.StdEncoding.DecodeString(k); err == nil && len(raw) == 32 && len(rec.PreparedWireGuardKeys) < clustermesh.MaxPreparedWireGuardKeys {
				rec.PreparedWireGuardKeys = append(rec.PreparedWireGuardKeys, k)
			}
		}
	}
	return rec, true
}

func (s *Source) publishNodes() error {
	nodes, err := s.nodes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	recs := make([]Record, 0, len(nodes))
	for _, n := range nodes {
		if rec, ok := s.nodeRecord(n); ok {
			recs = append(recs, rec)
		}
	}
	if err := s.pub.Replace(clustermesh.KindNodes, recs); err != nil {
		return fmt.Errorf("publish nodes: %w", err)
	}
	s.mu.Lock()
	s.status.Nodes = len(recs)
	s.mu.Unlock()
	return nil
}

// identityLabels is the label set that gives pod its identity: its own
// labels (minus those that carry no identity and those the operator
// derives), its namespace's name and its namespace's labels nsLabels.
func identityLabels(pod *corev1.Pod, nsLabels map[string]string) map[string]string {
	out := make(map[string]string, len(pod.Labels)+len(nsLabels)+1)
	for k, v := range pod.Labels {
		if !noIdentityLabels[k] && !clustermesh.ReservedLabel(k) {
			out[k] = v
		}
	}
	for k, v := range nsLabels {
		out[clustermesh.NamespaceLabelPrefix+k] = v
	}
	out[clustermesh.LabelNamespace] = pod.Namespace
	return out
}

// namedPorts returns the pod's named container ports, sorted.
func namedPorts(pod *corev1.Pod) []clustermesh.NamedPort {
	var out []clustermesh.NamedPort
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == "" || p.ContainerPort < 1 || p.ContainerPort > 65535 || len(out) == clustermesh.MaxNamedPorts {
				continue
			}
			proto := clustermesh.Protocol(p.Protocol)
			if proto == "" {
				proto = clustermesh.TCP
			}
			out = append(out, clustermesh.NamedPort{Name: p.Name, Port: uint16(p.ContainerPort), Protocol: proto})
		}
	}
	slices.SortFunc(out, func(a, b clustermesh.NamedPort) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return out
}

// namespaceLabels returns the labels of namespace ns, nil when it is not
// in the cache.
func (s *Source) namespaceLabels(ns string) map[string]string {
	n, err := s.namespaces.Get(ns)
	if err != nil {
		return nil
	}
	return n.Labels
}

// podIPs returns the pod's IPs worth publishing: none for host-network or
// finished pods.
func podIPs(pod *corev1.Pod) []netip.Addr {
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.DeletionTimestamp != nil && pod.Status.PodIP == "" {
		return nil
	}
	var out []netip.Addr
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	for _, p := range pod.Status.PodIPs {
		add(p.IP)
	}
	add(pod.Status.PodIP)
	return out
}

// podChanged reports whether an update touched anything the Source reads.
func podChanged(oldObj, newObj any) bool {
	o, ok1 := oldObj.(*corev1.Pod)
	n, ok2 := newObj.(*corev1.Pod)
	if !ok1 || !ok2 {
		return true
	}
	return !maps.Equal(o.Labels, n.Labels) || o.Status.PodIP != n.Status.PodIP || !slices.Equal(o.Status.PodIPs, n.Status.PodIPs) ||
		o.Status.HostIP != n.Status.HostIP || o.Status.Phase != n.Status.Phase || o.Spec.NodeName != n.Spec.NodeName ||
		(o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil)
}

// hostIP is where traffic to pod is tunnelled: its status hostIP, or its
// node's first address.
func (s *Source) hostIP(pod *corev1.Pod) (netip.Addr, bool) {
	if ip, err := netip.ParseAddr(pod.Status.HostIP); err == nil {
		return ip.Unmap(), true
	}
	if pod.Spec.NodeName == "" {
		return netip.Addr{}, false
	}
	n, err := s.nodes.Get(pod.Spec.NodeName)
	if err != nil {
		return netip.Addr{}, false
	}
	if rec, ok := s.nodeRecord(n); ok {
		return rec.IPs[0], true
	}
	return netip.Addr{}, false
}

// publishPods recomputes identities and IP entries from every pod.
func (s *Source) publishPods(ctx context.Context) error {
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	// Oldest first, so when two pods claim an IP (a finished pod and its
	// successor) the outcome is stable.
	slices.SortFunc(pods, func(a, b *corev1.Pod) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name))
	})
	used := make(map[string]bool)
	ips := make(map[netip.Prefix]*clustermesh.IPEntry)
	for _, pod := range pods {
		addrs := podIPs(pod)
		if len(addrs) == 0 {
			continue
		}
		host, ok := s.hostIP(pod)
		if !ok {
			continue
		}
		lbls := identityLabels(pod, s.namespaceLabels(pod.Namespace))
		id, err := s.alloc.allocate(ctx, lbls)
		if err != nil {
			return fmt.Errorf("identity for pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		used[canonical(lbls)] = true
		for _, ip := range addrs {
			p := netip.PrefixFrom(ip, ip.BitLen())
			if !s.cfg.Cluster.ContainsPodIP(p) {
				continue
			}
			if _, taken := ips[p]; !taken {
				ips[p] = &clustermesh.IPEntry{Prefix: p, Cluster: s.cfg.Cluster.Name, Identity: id, HostIP: host, NamedPorts: namedPorts(pod)}
			}
		}
	}
	s.alloc.retain(used)
	idRecs := s.alloc.records()
	recs := make([]Record, len(idRecs))
	for i, r := range idRecs {
		recs[i] = r
	}
	if err := s.pub.Replace(clustermesh.KindIdentities, recs); err != nil {
		return fmt.Errorf("publish identities: %w", err)
	}
	ipRecs := make([]Record, 0, len(ips))
	for _, e := range ips {
		ipRecs = append(ipRecs, e)
	}
	if err := s.pub.Replace(clustermesh.KindIPs, ipRecs); err != nil {
		return fmt.Errorf("publish IP entries: %w", err)
	}
	s.mu.Lock()
	s.status.Identities, s.status.IPs = len(recs), len(ipRecs)
	s.mu.Unlock()
	return nil
}

// serviceRecord computes the mesh record of key: the local service's when
// it is global, with the cluster's ClusterSetIP import of key as Import
// (alone, in a record that shares nothing, when the service is not global
// here); nil when neither. Called with localMu held.
func (s *Source) serviceRecord(key string) (*clustermesh.Service, error) {
	rec, err := s.localRecord(key)
	if err != nil {
		return nil, err
	}
	ns, name, _ := cutKey(key)
	im := s.importSpec(ns, key)
	if im == nil {
		return rec, nil
	}
	if rec == nil {
		rec = &clustermesh.Service{Cluster: s.cfg.Cluster.Name, Namespace: ns, Name: name, Global: true,
			Affinity: clustermesh.AffinityNone, Ports: []clustermesh.ServicePort{}}
	}
	rec.Import = im
	return rec, nil
}

// exportSpec is what the ServiceImports of other clusters take from the
// local export of svc. Exported labels and annotations that other clusters
// would refuse are left out, with a Warning Event on the ServiceExport.
func (s *Source) exportSpec(svc *corev1.Service, exp *mcsv1beta1.ServiceExport) *clustermesh.ExportSpec {
	e := &clustermesh.ExportSpec{
		SessionAffinity: string(svc.Spec.SessionAffinity),
		Labels:          maps.Clone(exp.Spec.ExportedLabels),
		Annotations:     maps.Clone(exp.Spec.ExportedAnnotations),
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		e.SessionAffinityTimeout = *c.ClientIP.TimeoutSeconds
	}
	if p := svc.Spec.InternalTrafficPolicy; p != nil {
		e.InternalTrafficPolicy = string(*p)
	}
	if d := svc.Spec.TrafficDistribution; d != nil {
		e.TrafficDistribution = *d
	}
	for _, f := range svc.Spec.IPFamilies {
		e.IPFamilies = append(e.IPFamilies, string(f))
	}
	if err := e.Validate(); err != nil {
		s.recorder.Event(exp, corev1.EventTypeWarning, "InvalidExport", err.Error()+"; exported labels and annotations are left out")
		e.Labels, e.Annotations = nil, nil
		if e.Validate() != nil {
			return nil
		}
	}
	return e
}

// localRecord computes the mesh record of the local service key, nil when
// the service is not global. It emits a Warning Event for an invalid
// annotation.
func (s *Source) localRecord(key string) (*clustermesh.Service, error) {
	ns, name, ok := cutKey(key)
	if !ok {
		return nil, nil
	}
	svc, err := s.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		delete(s.warned, key)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get service %s: %w", key, err)
	}
	settings, aerr := parseAnnotations(svc.Annotations)
	if aerr != nil {
		msg := aerr.Error() + "; the service is treated as not global"
		if s.warned[key] != msg {
			s.warned[key] = msg
			s.recorder.Event(svc, corev1.EventTypeWarning, "InvalidAnnotation", msg)
			s.log.Warn("invalid service annotation", "service", key, "err", aerr)
		}
		return nil, nil
	}
	delete(s.warned, key)
	exp := s.exportOf(ns, name)
	if !settings.Global && exp == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil
	}
	rec := &clustermesh.Service{
		Cluster:   s.cfg.Cluster.Name,
		Namespace: ns,
		Name:      name,
		Global:    true,
		Shared:    settings.Shared,
		Affinity:  settings.Affinity,
		Topology:  settings.Topology,
		Headless:  svc.Spec.ClusterIP == corev1.ClusterIPNone,
		Ports:     []clustermesh.ServicePort{},
	}
	if rec.Topology == clustermesh.TopologyNone && svc.Spec.TrafficDistribution != nil {
		switch *svc.Spec.TrafficDistribution {
		case corev1.ServiceTrafficDistributionPreferClose, corev1.ServiceTrafficDistributionPreferSameZone, corev1.ServiceTrafficDistributionPreferSameNode:
			rec.Topology = clustermesh.TopologyZone
		}
	}
	if exp != nil {
		rec.ExportedAt = exp.CreationTimestamp.UTC()
		rec.Export = s.exportSpec(svc, exp)
	}
	rec.ClusterIPs = clusterIPs(svc)
	names := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		if p.Port <= 0 || p.Port > 65535 || names[p.Name] {
			continue
		}
		names[p.Name] = true
		proto := clustermesh.Protocol(p.Protocol)
		if proto == "" {
			proto = clustermesh.TCP
		}
		if proto != clustermesh.TCP && proto != clustermesh.UDP && proto != clustermesh.SCTP {
			continue
		}
		rec.Ports = append(rec.Ports, clustermesh.ServicePort{Name: p.Name, Port: uint16(p.Port), Protocol: proto})
	}
	if rec.Shared {
		objs, err := s.slices.ByIndex(indexByService, key)
		if err != nil {
			return nil, fmt.Errorf("endpoint slices of %s: %w", key, err)
		}
		rec.Backends = backends(objs, names)
	}
	return rec, nil
}

// backends turns EndpointSlices (not our mirrors) into backends, one per
// address, deduplicated by IP and sorted.
func backends(objs []any, portNames map[string]bool) []clustermesh.Backend {
	byIP := map[netip.Addr]clustermesh.Backend{}
	for _, o := range objs {
		es, ok := o.(*discoveryv1.EndpointSlice)
		if !ok || es.Labels[discoveryv1.LabelManagedBy] == MirrorManagedBy || es.Labels[discoveryv1.LabelManagedBy] == ImportManagedBy {
			continue
		}
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var ports []clustermesh.BackendPort
		for _, p := range es.Ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 || !portNames[name] {
				continue
			}
			if slices.ContainsFunc(ports, func(bp clustermesh.BackendPort) bool { return bp.Name == name }) {
				continue
			}
			ports = append(ports, clustermesh.BackendPort{Name: name, Port: uint16(*p.Port)})
		}
		slices.SortFunc(ports, func(a, b clustermesh.BackendPort) int { return cmp.Compare(a.Name, b.Name) })
		for _, ep := range es.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ready
			if ep.Conditions.Serving != nil {
				serving = *ep.Conditions.Serving
			}
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				ip = ip.Unmap()
				b := clustermesh.Backend{IP: ip, Ports: ports, Ready: ready, Serving: serving, Terminating: terminating}
				if ep.NodeName != nil {
					b.Node = *ep.NodeName
				}
				if ep.Zone != nil {
					b.Zone = *ep.Zone
				}
				if ep.Hostname != nil {
					b.Hostname = *ep.Hostname
				}
				if prev, dup := byIP[ip]; dup && (prev.Ready || !b.Ready) {
					continue // keep the ready one of duplicates
				}
				byIP[ip] = b
			}
		}
	}
	out := make([]clustermesh.Backend, 0, len(byIP))
	for _, ip := range slices.SortedFunc(maps.Keys(byIP), netip.Addr.Compare) {
		out = append(out, byIP[ip])
	}
	return out
}

// publishServices recomputes the given services (or all of them) and
// hands them over: Replace until the Publisher has had one full set,
// Upsert/Delete afterwards. It returns the keys it looked at.
func (s *Source) publishServices(all bool, dirty []string) ([]string, error) {
	s.localMu.Lock()
	defer s.localMu.Unlock()
	full := !s.servicesPrimed
	keys := dirty
	if all || full {
		set := make(map[string]struct{}, len(s.local))
		svcs, err := s.services.List(labels.Everything())
		if err != nil {
			return nil, fmt.Errorf("list services: %w", err)
		}
		for _, svc := range svcs {
			set[svc.Namespace+"/"+svc.Name] = struct{}{}
		}
		for k := range s.local {
			set[k] = struct{}{}
		}
		for _, k := range dirty {
			set[k] = struct{}{}
		}
		keys = slices.Collect(maps.Keys(set))
	}
	var errs []error
	for _, k := range keys {
		rec, err := s.serviceRecord(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if rec == nil {
			if old, ok := s.local[k]; ok {
				delete(s.local, k)
				if !full {
					s.pub.Delete(old.Key())
				}
			}
			continue
		}
		s.local[k] = rec
		if !full {
			if err := s.pub.Upsert(rec); err != nil {
				errs = append(errs, fmt.Errorf("publish service %s: %w", k, err))
			}
		}
	}
	if full && len(errs) == 0 {
		recs := make([]Record, 0, len(s.local))
		for _, rec := range s.local {
			recs = append(recs, rec)
		}
		if err := s.pub.Replace(clustermesh.KindServices, recs); err != nil {
			errs = append(errs, fmt.Errorf("publish services: %w", err))
		} else {
			s.servicesPrimed = true
		}
	}
	return keys, errors.Join(errs...)
}

func cutKey(key string) (ns, name string, ok bool) {
	for i := 0; i < len(key); i++ {
		if key[i] == '/' {
			return key[:i], key[i+1:], key[:i] != "" && key[i+1:] != ""
		}
	}
	return "", "", false
}

// clusterIPs are a Service's virtual IPs: Spec.ClusterIPs, or the older
// Spec.ClusterIP alone; none for a headless service. Agents of this cluster
// answer on them with the backends of every cluster.
func clusterIPs(svc *corev1.Service) []netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}
