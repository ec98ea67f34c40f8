package k8s

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/braidmesh/braid/clustermesh"
)

// exporter is one cluster's export of a service.
type exporter struct {
	Cluster    clustermesh.ClusterName
	ExportedAt time.Time
	Headless   bool
	Ports      []clustermesh.ServicePort
	Export     clustermesh.ExportSpec // zero when the record carries none
}

// resolution is the aggregated ServiceImport of a service and its
// conflicts, by KEP-1645: exports are ranked oldest first (ties by cluster
// name); the oldest decides the type, session affinity (and its config),
// internal traffic policy, traffic distribution, exported labels and
// annotations, and every port it defines; later exports add the ports no
// older export named. Exports whose sets of port names differ conflict
// (PortConflict) while the import serves the union.
type resolution struct {
	Type  mcsv1beta1.ServiceImportType
	Ports []clustermesh.ServicePort
	// PortClusters names, per port name, the exporting clusters whose
	// export defines the port as Ports has it: the clusters that serve it.
	PortClusters map[string][]clustermesh.ClusterName
	// Export is the oldest export's spec.
	Export   clustermesh.ExportSpec
	Clusters []clustermesh.ClusterName // every exporter, by name
	// Reason and Message describe the conflicts; empty when there are none.
	// Reason is the first kind of conflict found, in the order type, ports,
	// session affinity, its config, internal traffic policy, traffic
	// distribution, labels, annotations; Message names every conflicting
	// cluster and every conflict.
	Reason  mcsv1beta1.ServiceExportConditionReason
	Message string
}

func affinityOf(e clustermesh.ExportSpec) string {
	if e.SessionAffinity == "" {
		return string(corev1.ServiceAffinityNone)
	}
	return e.SessionAffinity
}

func resolve(exps []exporter) resolution {
	var r resolution
	if len(exps) == 0 {
		return r
	}
	exps = slices.Clone(exps)
	slices.SortFunc(exps, func(a, b exporter) int {
		return cmp.Or(a.ExportedAt.Compare(b.ExportedAt), cmp.Compare(a.Cluster, b.Cluster))
	})
	oldest := exps[0]
	r.Type = mcsv1beta1.ClusterSetIP
	if oldest.Headless {
		r.Type = mcsv1beta1.Headless
	}
	r.Export = oldest.Export
	r.PortClusters = map[string][]clustermesh.ClusterName{}
	var msgs []string
	conflicting := map[clustermesh.ClusterName]bool{}
	reasons := map[mcsv1beta1.ServiceExportConditionReason][]string{} // reason -> losing clusters
	lose := func(reason mcsv1beta1.ServiceExportConditionReason, c clustermesh.ClusterName) {
		reasons[reason] = append(reasons[reason], string(c))
		conflicting[c], conflicting[oldest.Cluster] = true, true
	}
	owner := map[string]clustermesh.ClusterName{} // port name -> cluster that defined it
	for _, e := range exps {
		r.Clusters = append(r.Clusters, e.Cluster)
		if e.Cluster != oldest.Cluster {
			o, x := oldest.Export, e.Export
			if e.Headless != oldest.Headless {
				lose(mcsv1beta1.ServiceExportReasonTypeConflict, e.Cluster)
			}
			if affinityOf(x) != affinityOf(o) {
				lose(mcsv1beta1.ServiceExportReasonSessionAffinityConflict, e.Cluster)
			} else if affinityOf(o) == string(corev1.ServiceAffinityClientIP) && x.SessionAffinityTimeout != o.SessionAffinityTimeout {
				lose(mcsv1beta1.ServiceExportReasonSessionAffinityConfigConflict, e.Cluster)
			}
			if x.InternalTrafficPolicy != o.InternalTrafficPolicy {
				lose(mcsv1beta1.ServiceExportReasonInternalTrafficPolicyConflict, e.Cluster)
			}
			if x.TrafficDistribution != o.TrafficDistribution {
				lose(mcsv1beta1.ServiceExportReasonTrafficDistributionConflict, e.Cluster)
			}
			if !maps.Equal(x.Labels, o.Labels) {
				lose(mcsv1beta1.ServiceExportReasonLabelsConflict, e.Cluster)
			}
			if !maps.Equal(x.Annotations, o.Annotations) {
				lose(mcsv1beta1.ServiceExportReasonAnnotationsConflict, e.Cluster)
			}
		}
		for _, p := range e.Ports {
			i := slices.IndexFunc(r.Ports, func(q clustermesh.ServicePort) bool { return q.Name == p.Name })
			if i < 0 {
				r.Ports = append(r.Ports, p)
				owner[p.Name] = e.Cluster
				r.PortClusters[p.Name] = append(r.PortClusters[p.Name], e.Cluster)
				continue
			}
			if q := r.Ports[i]; q != p {
				conflicting[e.Cluster], conflicting[owner[p.Name]] = true, true
				reasons[mcsv1beta1.ServiceExportReasonPortConflict] = append(reasons[mcsv1beta1.ServiceExportReasonPortConflict], string(e.Cluster))
				msgs = append(msgs, fmt.Sprintf("port %q is %d/%s in cluster %s but %d/%s in cluster %s (oldest export, used)",
					p.Name, p.Port, p.Protocol, e.Cluster, q.Port, q.Protocol, owner[p.Name]))
				continue
			}
			r.PortClusters[p.Name] = append(r.PortClusters[p.Name], e.Cluster)
		}
	}
	// Exports whose port sets differ conflict too (KEP-1645, "Service
	// Port": the import exposes the union, and the mismatch is reported):
	// an export that lacks a port of the union conflicts with the clusters
	// that define it.
	for _, e := range exps {
		var missing []string
		for _, p := range r.Ports {
			if !slices.ContainsFunc(e.Ports, func(q clustermesh.ServicePort) bool { return q.Name == p.Name }) {
				missing = append(missing, fmt.Sprintf("%q (%d/%s, from cluster %s)", p.Name, p.Port, p.Protocol, owner[p.Name]))
				conflicting[owner[p.Name]] = true
			}
		}
		if len(missing) > 0 {
			conflicting[e.Cluster] = true
			reasons[mcsv1beta1.ServiceExportReasonPortConflict] = append(reasons[mcsv1beta1.ServiceExportReasonPortConflict], string(e.Cluster))
			msgs = append(msgs, fmt.Sprintf("cluster %s does not export port %s; the import serves the union of the exported ports",
				e.Cluster, strings.Join(missing, ", ")))
		}
	}
	slices.Sort(r.Clusters)
	for _, cs := range r.PortClusters {
		slices.Sort(cs)
	}
	var head []string
	for _, c := range []struct {
		reason mcsv1beta1.ServiceExportConditionReason
		what   string
		value  func(clustermesh.ExportSpec) string
	}{
		{mcsv1beta1.ServiceExportReasonTypeConflict, "type", nil},
		{mcsv1beta1.ServiceExportReasonPortConflict, "", nil},
		{mcsv1beta1.ServiceExportReasonSessionAffinityConflict, "session affinity", affinityOf},
		{mcsv1beta1.ServiceExportReasonSessionAffinityConfigConflict, "session affinity timeout", func(e clustermesh.ExportSpec) string {
			return fmt.Sprintf("%ds", e.SessionAffinityTimeout)
		}},
		{mcsv1beta1.ServiceExportReasonInternalTrafficPolicyConflict, "internal traffic policy", func(e clustermesh.ExportSpec) string {
			return cmp.Or(e.InternalTrafficPolicy, "unset")
		}},
		{mcsv1beta1.ServiceExportReasonTrafficDistributionConflict, "traffic distribution", func(e clustermesh.ExportSpec) string {
			return cmp.Or(e.TrafficDistribution, "unset")
		}},
		{mcsv1beta1.ServiceExportReasonLabelsConflict, "exported labels", func(e clustermesh.ExportSpec) string { return formatMap(e.Labels) }},
		{mcsv1beta1.ServiceExportReasonAnnotationsConflict, "exported annotations", func(e clustermesh.ExportSpec) string { return formatMap(e.Annotations) }},
	} {
		losers := reasons[c.reason]
		if len(losers) == 0 {
			continue
		}
		if r.Reason == "" {
			r.Reason = c.reason
		}
		switch {
		case c.reason == mcsv1beta1.ServiceExportReasonTypeConflict:
			head = append(head, fmt.Sprintf("type %s of cluster %s (oldest export, used) differs in cluster %s",
				r.Type, oldest.Cluster, strings.Join(losers, ", ")))
		case c.value != nil:
			head = append(head, fmt.Sprintf("%s %s of cluster %s (oldest export, used) differs in cluster %s",
				c.what, c.value(oldest.Export), oldest.Cluster, strings.Join(losers, ", ")))
		}
	}
	msgs = append(head, msgs...)
	if len(msgs) > 0 {
		names := make([]string, 0, len(conflicting))
		for c := range conflicting {
			names = append(names, string(c))
		}
		slices.Sort(names)
		r.Message = "conflicting clusters: " + strings.Join(names, ", ") + "; " + strings.Join(msgs, "; ")
	}
	return r
}

// formatMap prints a label or annotation map sorted by key.
func formatMap(m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// mcsKeys is every service key that may need an import, export status or
// mirror.
func (s *Source) mcsKeys(remote map[clustermesh.ClusterName]RemoteCluster) map[string]struct{} {
	s.localMu.Lock()
	keys := make(map[string]struct{}, len(s.local))
	for k := range s.local {
		keys[k] = struct{}{}
	}
	s.localMu.Unlock()
	for _, rc := range remote {
		for k, svc := range rc.Services {
			if !svc.ExportedAt.IsZero() || svc.Headless {
				keys[k] = struct{}{}
			}
		}
	}
	for _, k := range s.slices.ListIndexFuncValues(indexMirrors) {
		keys[k] = struct{}{}
	}
	if s.mcsOn {
		if exps, err := s.exports.List(everything); err == nil {
			for _, e := range exps {
				keys[e.Namespace+"/"+e.Name] = struct{}{}
			}
		}
		if imps, err := s.imports.List(everything); err == nil {
			for _, i := range imps {
				keys[i.Namespace+"/"+i.Name] = struct{}{}
			}
		}
	}
	return keys
}

func (s *Source) reconcileKey(ctx context.Context, key string, remote map[clustermesh.ClusterName]RemoteCluster, complete bool) error {
	ns, name, ok := cutKey(key)
	if !ok {
		return nil
	}
	s.localMu.Lock()
	local, warning := s.local[key], s.warned[key]
	s.localMu.Unlock()
	var errs []error
	if s.mcsOn {
		var exps []exporter
		if local != nil && !local.ExportedAt.IsZero() {
			exps = append(exps, exporterOf(s.cfg.Cluster.Name, local))
		}
		for cn, rc := range remote {
			if svc, ok := rc.Services[key]; ok && svc.Global && !svc.ExportedAt.IsZero() {
				exps = append(exps, exporterOf(cn, &svc))
			}
		}
		res := resolve(exps)
		if exp := s.exportOf(ns, name); exp != nil {
			errs = append(errs, s.updateExportStatus(ctx, exp, local, warning, res))
		}
		errs = append(errs, s.reconcileImport(ctx, ns, name, res, local, remote, complete))
	}
	errs = append(errs, s.reconcileMirrors(ctx, ns, name, local, remote, complete))
	return errors.Join(errs...)
}

func exporterOf(c clustermesh.ClusterName, svc *clustermesh.Service) exporter {
	e := exporter{Cluster: c, ExportedAt: svc.ExportedAt, Headless: svc.Headless, Ports: svc.Ports}
	if svc.Export != nil {
		e.Export = *svc.Export
	}
	return e
}

// updateExportStatus sets the Valid, Ready and Conflict conditions.
// warning is the service's invalid-annotation warning, if any.
func (s *Source) updateExportStatus(ctx context.Context, exp *mcsv1beta1.ServiceExport, local *clustermesh.Service, warning string, res resolution) error {
	key := exp.Namespace + "/" + exp.Name
	cond := func(t mcsv1beta1.ServiceExportConditionType, st metav1.ConditionStatus, r mcsv1beta1.ServiceExportConditionReason, msg string) metav1.Condition {
		return metav1.Condition{Type: string(t), Status: st, Reason: string(r), Message: msg, ObservedGeneration: exp.Generation}
	}
	var conds []metav1.Condition
	svc, err := s.services.Services(exp.Namespace).Get(exp.Name)
	switch {
	case apierrors.IsNotFound(err):
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonNoService,
			fmt.Sprintf("service %s does not exist", key)))
	case err != nil:
		return fmt.Errorf("get service %s: %w", key, err)
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonInvalidServiceType,
			"ExternalName services cannot be exported"))
	case warning != "":
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, "InvalidAnnotation", warning))
	case local == nil:
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, "NotExported", "service is not published"))
	default:
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonValid, "service is valid for export"))
	}
	valid := conds[0].Status == metav1.ConditionTrue
	if valid {
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonReady,
			"service is exported to the mesh"))
	} else {
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonPending,
			"service is not exported: see the Valid condition"))
	}
	if valid && res.Message != "" {
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionTrue, res.Reason, res.Message))
	} else {
		conds = append(conds, cond(mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonNoConflicts, "no conflicts"))
	}
	updated := exp.DeepCopy()
	changed := false
	for _, c := range conds {
		if meta.SetStatusCondition(&updated.Status.Conditions, c) {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	_, err = s.clients.MCS.MulticlusterV1beta1().ServiceExports(exp.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	s.metrics.writes.WithLabelValues("serviceexports", "update-status").Inc()
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("update status of service export %s: %w", key, err)
	}
	return nil
}

func (s *Source) namespaceExists(ns string) bool {
	n, err := s.namespaces.Get(ns)
	return err == nil && n.DeletionTimestamp == nil
}

// importMeta is the labels and annotations of the ServiceImport of res:
// the oldest export's exportedLabels and exportedAnnotations (those that
// are valid here), plus ours.
func importMeta(res resolution, derived string) (map[string]string, map[string]string) {
	lbls := map[string]string{}
	for k, v := range res.Export.Labels {
		if len(validation.IsQualifiedName(k)) == 0 && len(validation.IsValidLabelValue(v)) == 0 {
			lbls[k] = v
		}
	}
	lbls[LabelManagedBy] = managedByValue
	anns := map[string]string{}
	for k, v := range res.Export.Annotations {
		if len(validation.IsQualifiedName(strings.ToLower(k))) == 0 {
			anns[k] = v
		}
	}
	if derived != "" {
		anns[AnnotationDerivedService] = derived
	}
	return lbls, anns
}

// importSpecOf is the ServiceImport spec for res, with the derived
// Service's ClusterSetIPs; fallback are the IP families of a headless
// import when neither the export nor the derived Service names any.
func importSpecOf(res resolution, derived *corev1.Service, fallback []corev1.IPFamily) mcsv1beta1.ServiceImportSpec {
	spec := mcsv1beta1.ServiceImportSpec{Type: res.Type, Ports: []mcsv1beta1.ServicePort{}}
	for _, p := range res.Ports {
		spec.Ports = append(spec.Ports, mcsv1beta1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: int32(p.Port)})
	}
	spec.SessionAffinity = corev1.ServiceAffinity(affinityOf(res.Export))
	if spec.SessionAffinity == corev1.ServiceAffinityClientIP && res.Export.SessionAffinityTimeout > 0 {
		spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(res.Export.SessionAffinityTimeout)}}
	}
	if res.Export.InternalTrafficPolicy != "" {
		spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicy(res.Export.InternalTrafficPolicy))
	}
	if res.Export.TrafficDistribution != "" {
		spec.TrafficDistribution = ptr.To(res.Export.TrafficDistribution)
	}
	if res.Type == mcsv1beta1.ClusterSetIP && derived != nil && derived.Spec.ClusterIP != corev1.ClusterIPNone {
		spec.IPs = slices.Clone(derived.Spec.ClusterIPs)
		spec.IPFamilies = slices.Clone(derived.Spec.IPFamilies)
	}
	if res.Type == mcsv1beta1.Headless {
		// No IPs, but the families of the endpoints DNS answers with:
		// the oldest export's, else the derived Service's, else those
		// the clusterset ranges serve.
		for _, f := range res.Export.IPFamilies {
			if f := corev1.IPFamily(f); (f == corev1.IPv4Protocol || f == corev1.IPv6Protocol) && !slices.Contains(spec.IPFamilies, f) {
				spec.IPFamilies = append(spec.IPFamilies, f)
			}
		}
		if len(spec.IPFamilies) == 0 && derived != nil {
			spec.IPFamilies = slices.Clone(derived.Spec.IPFamilies)
		}
		if len(spec.IPFamilies) == 0 {
			spec.IPFamilies = fallback
		}
	}
	return spec
}

// missesExporter reports whether a remote cluster the import lists is
// absent from res while the view of it is not yet synced.
func (s *Source) missesExporter(have *mcsv1beta1.ServiceImport, res resolution, remote map[clustermesh.ClusterName]RemoteCluster) bool {
	for _, cs := range have.Status.Clusters {
		c := clustermesh.ClusterName(cs.Cluster)
		if c == s.cfg.Cluster.Name || slices.Contains(res.Clusters, c) {
			continue
		}
		if rc, known := remote[c]; !known || !rc.Synced {
			return true
		}
	}
	return false
}

// reconcileImport makes the ServiceImport of ns/name, its derived Service
// and its EndpointSlices match res.
func (s *Source) reconcileImport(ctx context.Context, ns, name string, res resolution, local *clustermesh.Service,
	remote map[clustermesh.ClusterName]RemoteCluster, complete bool) error {
	key := ns + "/" + name
	client := s.clients.MCS.MulticlusterV1beta1().ServiceImports(ns)
	have, err := s.imports.ServiceImports(ns).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("get service import %s: %w", key, err)
	}
	if err != nil {
		have = nil
	}
	want := len(res.Clusters) > 0 && s.namespaceExists(ns)
	if have != nil && have.Labels[LabelManagedBy] != managedByValue {
		return nil // someone else's
	}
	if !complete && have != nil && s.missesExporter(have, res, remote) {
		// A partial view (a restarted operator) lacks an exporter the
		// import lists: keep the import, its derived Service, slices and
		// record as they are until that cluster is seen again or gone.
		return nil
	}
	if !want {
		if !complete {
			// A partial view (a restarted operator) has not seen every
			// exporter yet: keep serving what was decided before.
			return nil
		}
		s.setImported(key, nil)
		var errs []error
		if have != nil {
			err := client.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &have.UID}})
			s.metrics.writes.WithLabelValues("serviceimports", "delete").Inc()
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				errs = append(errs, fmt.Errorf("delete service import %s: %w", key, err))
			}
		}
		errs = append(errs, s.deleteDerived(ctx, ns, name), s.reconcileImportSlices(ctx, key, nil, res, local, remote, complete))
		return errors.Join(errs...)
	}
	var errs []error
	derived, err := s.ensureDerived(ctx, ns, name, res)
	if err != nil {
		errs = append(errs, err)
	}
	if derived != nil && res.Type == mcsv1beta1.ClusterSetIP {
		im := &imported{derived: derived.Name, ports: slices.Clone(res.Ports), clusters: res.PortClusters}
		if !complete {
			im.clusters = s.keepClusters(key, im)
		}
		s.setImported(key, im)
	} else {
		s.setImported(key, nil)
	}
	errs = append(errs, s.reconcileImportSlices(ctx, key, derived, res, local, remote, complete))
	dname := ""
	if derived != nil {
		dname = derived.Name
	}
	lbls, anns := importMeta(res, dname)
	spec := importSpecOf(res, derived, s.families(nil))
	if have != nil && len(have.Spec.IPs) > 0 && len(spec.IPs) == 0 && res.Type == mcsv1beta1.ClusterSetIP {
		// The derived Service is being replaced: keep the IPs until it is.
		spec.IPs, spec.IPFamilies = have.Spec.IPs, have.Spec.IPFamilies
	}
	var clusters []mcsv1beta1.ClusterStatus
	for _, c := range res.Clusters {
		clusters = append(clusters, mcsv1beta1.ClusterStatus{Cluster: string(c)})
	}
	if have == nil {
		obj := &mcsv1beta1.ServiceImport{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbls, Annotations: anns},
			Spec:       spec,
		}
		created, err := client.Create(ctx, obj, metav1.CreateOptions{})
		s.metrics.writes.WithLabelValues("serviceimports", "create").Inc()
		if apierrors.IsAlreadyExists(err) {
			return errors.Join(errs...) // the informer will bring it; the next pass updates it
		}
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("create service import %s: %w", key, err))...)
		}
		have = created
	} else if !equality.Semantic.DeepEqual(have.Spec, spec) || !maps.Equal(have.Labels, lbls) || !maps.Equal(have.Annotations, anns) {
		upd := have.DeepCopy()
		upd.Spec, upd.Labels, upd.Annotations = spec, lbls, anns
		updated, err := client.Update(ctx, upd, metav1.UpdateOptions{})
		s.metrics.writes.WithLabelValues("serviceimports", "update").Inc()
		if err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				return errors.Join(errs...)
			}
			return errors.Join(append(errs, fmt.Errorf("update service import %s: %w", key, err))...)
		}
		have = updated
	}
	if !equality.Semantic.DeepEqual(have.Status.Clusters, clusters) {
		upd := have.DeepCopy()
		upd.Status.Clusters = clusters
		_, err := client.UpdateStatus(ctx, upd, metav1.UpdateOptions{})
		s.metrics.writes.WithLabelValues("serviceimports", "update-status").Inc()
		if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("update status of service import %s: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

// reconcileImportSlices makes the EndpointSlices of the import key hold
// every exporting cluster's backends (the local cluster's included): per
// cluster, labelled multicluster.kubernetes.io/service-name and
// multicluster.kubernetes.io/source-cluster, owned by the derived Service
// and named after it. With derived nil every slice goes.
func (s *Source) reconcileImportSlices(ctx context.Context, key string, derived *corev1.Service, res resolution, local *clustermesh.Service,
	remote map[clustermesh.ClusterName]RemoteCluster, complete bool) error {
	ns, name, _ := cutKey(key)
	objs, err := s.slices.ByIndex(indexImports, key)
	if err != nil {
		return fmt.Errorf("endpoint slices of import %s: %w", key, err)
	}
	have := make(map[string]*discoveryv1.EndpointSlice, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			have[es.Name] = es
		}
	}
	want := map[string]*discoveryv1.EndpointSlice{}
	if derived != nil {
		owners := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: derived.Name, UID: derived.UID}}
		for _, c := range res.Clusters {
			var rec *clustermesh.Service
			if c == s.cfg.Cluster.Name {
				rec = local
			} else if rs, ok := remote[c].Services[key]; ok {
				rec = &rs
			}
			if rec == nil || !rec.Shared {
				continue
			}
			// Only the ports the import serves from this cluster.
			only := *rec
			only.Ports = slices.DeleteFunc(slices.Clone(rec.Ports), func(p clustermesh.ServicePort) bool {
				return !slices.Contains(res.PortClusters[p.Name], c)
			})
			lbls := map[string]string{
				discoveryv1.LabelServiceName:  derived.Name,
				discoveryv1.LabelManagedBy:    ImportManagedBy,
				mcsv1beta1.LabelServiceName:   name,
				mcsv1beta1.LabelSourceCluster: string(c),
			}
			for _, es := range desiredSlices(ns, fmt.Sprintf("%s-%s", derived.Name, c), lbls, owners, &only) {
				want[es.Name] = es
			}
		}
	}
	return s.applySlices(ctx, key, have, want, remote, complete, derived == nil)
}
