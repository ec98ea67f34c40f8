package k8s

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/braidmesh/braid/clustermesh"
)

var everything = labels.Everything()

// indexMirrors indexes our mirrored EndpointSlices by "namespace/service".
const indexMirrors = "mirrors"

// indexImports indexes the EndpointSlices of our ServiceImports by
// "namespace/import".
const indexImports = "imports"

// LabelSourceCluster, on a mirrored EndpointSlice, names the cluster whose
// backends it holds. Mirrors do not carry the MCS labels: those belong to
// the slices of ServiceImports (ImportManagedBy), which DNS serves under
// clusterset.local.
const LabelSourceCluster = "braid.dev/source-cluster"

func importIndex(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || es.Labels[discoveryv1.LabelManagedBy] != ImportManagedBy {
		return nil, nil
	}
	if k, ok := importedKey(es); ok {
		return []string{k}, nil
	}
	return nil, nil
}

// maxEndpointsPerSlice is the API's limit.
const maxEndpointsPerSlice = 1000

func mirrorIndex(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || es.Labels[discoveryv1.LabelManagedBy] != MirrorManagedBy {
		return nil, nil
	}
	if k, ok := sliceServiceKey(es); ok {
		return []string{k}, nil
	}
	return nil, nil
}

// desiredMirrors builds the EndpointSlices mirroring one remote cluster's
// backends of a service: one slice per address family and port mapping,
// split at the API's size limit. Names are derived from the content's
// shape, so an unchanged shape keeps its slice.
func desiredMirrors(svc *corev1.Service, cluster clustermesh.ClusterName, remote *clustermesh.Service) []*discoveryv1.EndpointSlice {
	return desiredSlices(svc.Namespace, fmt.Sprintf("%s-%s", svc.Name, cluster), map[string]string{
		discoveryv1.LabelServiceName: svc.Name,
		discoveryv1.LabelManagedBy:   MirrorManagedBy,
		LabelSourceCluster:           string(cluster),
	}, []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID}}, remote)
}

// desiredSlices builds EndpointSlices holding remote's backends: one slice
// per address family and port mapping, split at the API's size limit,
// named prefix-<hash of the shape>, so an unchanged shape keeps its slice.
func desiredSlices(ns, prefix string, lbls map[string]string, owners []metav1.OwnerReference, remote *clustermesh.Service) []*discoveryv1.EndpointSlice {
	type group struct {
		addrType discoveryv1.AddressType
		ports    []discoveryv1.EndpointPort
		eps      []discoveryv1.Endpoint
	}
	groups := map[string]*group{}
	for _, b := range remote.Backends {
		at := discoveryv1.AddressTypeIPv4
		if b.IP.Is6() {
			at = discoveryv1.AddressTypeIPv6
		}
		var ports []discoveryv1.EndpointPort
		sig := []string{string(at)}
		for _, sp := range remote.Ports {
			port, ok := b.Port(sp.Name)
			if !ok {
				continue
			}
			name, p, proto := sp.Name, int32(port), corev1.Protocol(sp.Protocol)
			ports = append(ports, discoveryv1.EndpointPort{Name: &name, Port: &p, Protocol: &proto})
			sig = append(sig, fmt.Sprintf("%s/%d/%s", sp.Name, port, sp.Protocol))
		}
		key := strings.Join(sig, ",")
		g := groups[key]
		if g == nil {
			g = &group{addrType: at, ports: ports}
			groups[key] = g
		}
		ready, serving, terminating := b.Ready, b.Serving, b.Terminating
		ep := discoveryv1.Endpoint{
			Addresses:  []string{b.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
		}
		if b.Zone != "" {
			zone := b.Zone
			ep.Zone = &zone
		}
		if b.Hostname != "" {
			hostname := b.Hostname
			ep.Hostname = &hostname
		}
		g.eps = append(g.eps, ep)
	}
	var out []*discoveryv1.EndpointSlice
	for key, g := range groups {
		h := fnv.New32a()
		h.Write([]byte(key))
		base := fmt.Sprintf("%s-%08x", prefix, h.Sum32())
		for i := 0; i < len(g.eps); i += maxEndpointsPerSlice {
			name := base
			if i > 0 {
				name = fmt.Sprintf("%s-%d", base, i/maxEndpointsPerSlice)
			}
			ports := g.ports
			if ports == nil {
				ports = []discoveryv1.EndpointPort{}
			}
			out = append(out, &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{
					Name:            name,
					Namespace:       ns,
					Labels:          maps.Clone(lbls),
					OwnerReferences: slices.Clone(owners),
				},
				AddressType: g.addrType,
				Endpoints:   g.eps[i:min(i+maxEndpointsPerSlice, len(g.eps))],
				Ports:       ports,
			})
		}
	}
	slices.SortFunc(out, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// reconcileMirrors makes the mirrored EndpointSlices of ns/name match the
// remote clusters' backends. Mirrors exist only for a local headless global
// service. Mirrors of a cluster that is not synced are left alone; mirrors
// of a cluster absent from the view are deleted only once the view is
// complete.
func (s *Source) reconcileMirrors(ctx context.Context, ns, name string, local *clustermesh.Service, remote map[clustermesh.ClusterName]RemoteCluster, complete bool) error {
	key := ns + "/" + name
	objs, err := s.slices.ByIndex(indexMirrors, key)
	if err != nil {
		return fmt.Errorf("mirrors of %s: %w", key, err)
	}
	have := make(map[string]*discoveryv1.EndpointSlice, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			have[es.Name] = es
		}
	}
	want := map[string]*discoveryv1.EndpointSlice{}
	var svc *corev1.Service
	if local != nil && local.Headless {
		if svc, err = s.services.Services(ns).Get(name); err != nil {
			svc = nil
		}
	}
	if svc != nil {
		for cn, rc := range remote {
			rs, ok := rc.Services[key]
			if !ok || !rs.Global || !rs.Shared {
				continue
			}
			for _, es := range desiredMirrors(svc, cn, &rs) {
				want[es.Name] = es
			}
		}
	}
	localGone := local == nil || !local.Headless
	return s.applySlices(ctx, key, have, want, remote, complete, localGone)
}

// sliceCluster is the cluster whose backends a slice we own holds.
func sliceCluster(es *discoveryv1.EndpointSlice) clustermesh.ClusterName {
	if c := es.Labels[LabelSourceCluster]; c != "" {
		return clustermesh.ClusterName(c)
	}
	return clustermesh.ClusterName(es.Labels[mcsv1beta1.LabelSourceCluster])
}

// staleSliceLabels are labels a slice we own loses when its desired form
// lacks them (mirrors carried the MCS labels before imports had slices).
var staleSliceLabels = []string{mcsv1beta1.LabelServiceName, mcsv1beta1.LabelSourceCluster, LabelSourceCluster}

// applySlices makes the slices we own for key (have) match want. A
// cluster's slices are left alone while its view is partial (known, not
// synced); a slice no longer wanted is deleted when ownerGone, when its
// cluster is synced, or when the cluster left a complete view. The local
// cluster counts as synced.
func (s *Source) applySlices(ctx context.Context, key string, have, want map[string]*discoveryv1.EndpointSlice,
	remote map[clustermesh.ClusterName]RemoteCluster, complete, ownerGone bool) error {
	ns, _, _ := cutKey(key)
	synced := func(c clustermesh.ClusterName) (known, ok bool) {
		if c == s.cfg.Cluster.Name {
			return true, true
		}
		rc, known := remote[c]
		return known, rc.Synced
	}
	client := s.clients.Kube.DiscoveryV1().EndpointSlices(ns)
	var errs []error
	for n, es := range want {
		old, ok := have[n]
		_, clusterSynced := synced(sliceCluster(es))
		stale := false
		if ok {
			for _, l := range staleSliceLabels {
				if _, in := old.Labels[l]; in && es.Labels[l] == "" {
					stale = true
				}
			}
		}
		switch {
		case !ok:
			_, err := client.Create(ctx, es, metav1.CreateOptions{})
			s.metrics.writes.WithLabelValues("endpointslices", "create").Inc()
			if err != nil && !apierrors.IsAlreadyExists(err) {
				errs = append(errs, fmt.Errorf("create endpoint slice %s/%s: %w", ns, n, err))
			}
		case !clusterSynced:
			// Partial view of that cluster: keep what is there.
		case old.AddressType != es.AddressType:
			errs = append(errs, s.deleteMirror(ctx, old)) // immutable: recreate on the next pass
			s.markMCS(key)
		case stale || !equality.Semantic.DeepEqual(old.Endpoints, es.Endpoints) || !equality.Semantic.DeepEqual(old.Ports, es.Ports) ||
			!labelsInclude(old.Labels, es.Labels) || !equality.Semantic.DeepEqual(old.OwnerReferences, es.OwnerReferences):
			upd := old.DeepCopy()
			upd.Endpoints, upd.Ports, upd.OwnerReferences = es.Endpoints, es.Ports, es.OwnerReferences
			if upd.Labels == nil {
				upd.Labels = map[string]string{}
			}
			for _, l := range staleSliceLabels {
				if es.Labels[l] == "" {
					delete(upd.Labels, l)
				}
			}
			for k, v := range es.Labels {
				upd.Labels[k] = v
			}
			_, err := client.Update(ctx, upd, metav1.UpdateOptions{})
			s.metrics.writes.WithLabelValues("endpointslices", "update").Inc()
			if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("update endpoint slice %s/%s: %w", ns, n, err))
			}
		}
	}
	for n, old := range have {
		if _, ok := want[n]; ok {
			continue
		}
		known, clusterSynced := synced(sliceCluster(old))
		if ownerGone || (known && clusterSynced) || (!known && complete) {
			errs = append(errs, s.deleteMirror(ctx, old))
		}
	}
	return errors.Join(errs...)
}

func (s *Source) deleteMirror(ctx context.Context, es *discoveryv1.EndpointSlice) error {
	err := s.clients.Kube.DiscoveryV1().EndpointSlices(es.Namespace).Delete(ctx, es.Name,
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &es.UID}})
	s.metrics.writes.WithLabelValues("endpointslices", "delete").Inc()
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete mirror %s/%s: %w", es.Namespace, es.Name, err)
	}
	return nil
}

func labelsInclude(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
