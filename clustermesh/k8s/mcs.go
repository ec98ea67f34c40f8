package k8s

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/braidmesh/braid/clustermesh"
)

// exporter is one cluster's export of a service.
type exporter struct {
	Cluster    clustermesh.ClusterName
	ExportedAt time.Time
	Headless   bool
	Ports      []clustermesh.ServicePort
}

// resolution is the aggregated ServiceImport of a service and its
// conflicts, by KEP-1645: exports are ranked oldest first (ties by cluster
// name); the oldest decides the type and every port it defines, later
// exports add the ports no older export named.
type resolution struct {
	Type     mcsv1beta1.ServiceImportType
	Ports    []clustermesh.ServicePort
	Clusters []clustermesh.ClusterName // every exporter, by name
	// Reason and Message describe the conflicts; empty when there are none.
	Reason  mcsv1beta1.ServiceExportConditionReason
	Message string
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
	var msgs []string
	conflicting := map[clustermesh.ClusterName]bool{}
	var typeLosers []string
	owner := map[string]clustermesh.ClusterName{} // port name -> cluster that defined it
	for _, e := range exps {
		r.Clusters = append(r.Clusters, e.Cluster)
		if e.Headless != oldest.Headless {
			typeLosers = append(typeLosers, string(e.Cluster))
			conflicting[e.Cluster], conflicting[oldest.Cluster] = true, true
		}
		for _, p := range e.Ports {
			i := slices.IndexFunc(r.Ports, func(q clustermesh.ServicePort) bool { return q.Name == p.Name })
			if i < 0 {
				r.Ports = append(r.Ports, p)
				owner[p.Name] = e.Cluster
				continue
			}
			if q := r.Ports[i]; q != p {
				conflicting[e.Cluster], conflicting[owner[p.Name]] = true, true
				msgs = append(msgs, fmt.Sprintf("port %q is %d/%s in cluster %s but %d/%s in cluster %s (oldest export, used)",
					p.Name, p.Port, p.Protocol, e.Cluster, q.Port, q.Protocol, owner[p.Name]))
			}
		}
	}
	slices.Sort(r.Clusters)
	if len(typeLosers) > 0 {
		r.Reason = mcsv1beta1.ServiceExportReasonTypeConflict
		msgs = append([]string{fmt.Sprintf("type %s of cluster %s (oldest export, used) differs in cluster %s",
			r.Type, oldest.Cluster, strings.Join(typeLosers, ", "))}, msgs...)
	} else if len(msgs) > 0 {
		r.Reason = mcsv1beta1.ServiceExportReasonPortConflict
	}
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
			exps = append(exps, exporter{Cluster: s.cfg.Cluster.Name, ExportedAt: local.ExportedAt, Headless: local.Headless, Ports: local.Ports})
		}
		for cn, rc := range remote {
			if svc, ok := rc.Services[key]; ok && svc.Global && !svc.ExportedAt.IsZero() {
				exps = append(exps, exporter{Cluster: cn, ExportedAt: svc.ExportedAt, Headless: svc.Headless, Ports: svc.Ports})
			}
		}
		res := resolve(exps)
		if exp := s.exportOf(ns, name); exp != nil {
			errs = append(errs, s.updateExportStatus(ctx, exp, local, warning, res))
		}
		errs = append(errs, s.reconcileImport(ctx, ns, name, res, complete))
	}
	errs = append(errs, s.reconcileMirrors(ctx, ns, name, local, remote, complete))
	return errors.Join(errs...)
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

// reconcileImport makes the ServiceImport of ns/name match res.
func (s *Source) reconcileImport(ctx context.Context, ns, name string, res resolution, complete bool) error {
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
	if !want {
		if have == nil || !complete {
			return nil
		}
		err := client.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &have.UID}})
		s.metrics.writes.WithLabelValues("serviceimports", "delete").Inc()
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete service import %s: %w", key, err)
		}
		return nil
	}
	spec := mcsv1beta1.ServiceImportSpec{Type: res.Type, Ports: []mcsv1beta1.ServicePort{}}
	for _, p := range res.Ports {
		spec.Ports = append(spec.Ports, mcsv1beta1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: int32(p.Port)})
	}
	var clusters []mcsv1beta1.ClusterStatus
	for _, c := range res.Clusters {
		clusters = append(clusters, mcsv1beta1.ClusterStatus{Cluster: string(c)})
	}
	if have == nil {
		obj := &mcsv1beta1.ServiceImport{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{LabelManagedBy: managedByValue}},
			Spec:       spec,
		}
		created, err := client.Create(ctx, obj, metav1.CreateOptions{})
		s.metrics.writes.WithLabelValues("serviceimports", "create").Inc()
		if apierrors.IsAlreadyExists(err) {
			return nil // the informer will bring it; the next pass updates it
		}
		if err != nil {
			return fmt.Errorf("create service import %s: %w", key, err)
		}
		have = created
	} else if !equality.Semantic.DeepEqual(have.Spec.Ports, spec.Ports) || have.Spec.Type != spec.Type {
		upd := have.DeepCopy()
		upd.Spec.Ports, upd.Spec.Type = spec.Ports, spec.Type
		updated, err := client.Update(ctx, upd, metav1.UpdateOptions{})
		s.metrics.writes.WithLabelValues("serviceimports", "update").Inc()
		if err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("update service import %s: %w", key, err)
		}
		have = updated
	}
	if !equality.Semantic.DeepEqual(have.Status.Clusters, clusters) {
		upd := have.DeepCopy()
		upd.Status.Clusters = clusters
		_, err := client.UpdateStatus(ctx, upd, metav1.UpdateOptions{})
		s.metrics.writes.WithLabelValues("serviceimports", "update-status").Inc()
		if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return fmt.Errorf("update status of service import %s: %w", key, err)
		}
	}
	return nil
}
