package k8s

import (
	"context"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/mcs-api/config/crd"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/braidmesh/braid/reconcile"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// ensureCRDs creates the ServiceExport and ServiceImport CRDs that do not
// exist; existing ones are left as they are (deploy/ owns upgrades).
func (s *Source) ensureCRDs(ctx context.Context) error {
	for _, raw := range [][]byte{crd.ServiceExportCRD, crd.ServiceImportCRD} {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(raw, &obj.Object); err != nil {
			return fmt.Errorf("ensure MCS CRDs: parse: %w", err)
		}
		_, err := s.clients.Dynamic.Resource(crdResource).Create(ctx, obj, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("ensure MCS CRD %s: %w", obj.GetName(), err)
		}
	}
	return nil
}

// mcsServed reports whether the cluster serves ServiceExports and
// ServiceImports.
func (s *Source) mcsServed() bool {
	list, err := s.clients.Kube.Discovery().ServerResourcesForGroupVersion(mcsv1beta1.GroupVersion.String())
	if err != nil {
		return false
	}
	var names []string
	for _, r := range list.APIResources {
		names = append(names, r.Name)
	}
	return slices.Contains(names, mcsv1beta1.ServiceExportPluralName) && slices.Contains(names, mcsv1beta1.ServiceImportPluralName)
}

// setupMCS decides whether MCS is handled, creating the CRDs if asked to
// and waiting (up to a minute) for them to be served.
func (s *Source) setupMCS(ctx context.Context) bool {
	setErr := func(msg string) {
		s.mu.Lock()
		s.mcsErr = msg
		s.mu.Unlock()
	}
	if s.clients.MCS == nil {
		return false
	}
	if s.cfg.EnsureCRDs && s.clients.Dynamic != nil {
		if err := s.ensureCRDs(ctx); err != nil {
			s.log.Warn("cannot ensure MCS CRDs", "err", err)
			setErr(err.Error())
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if s.mcsServed() {
			setErr("")
			if err := s.ensureClusterSetCIDR(ctx); err != nil {
				s.log.Warn("cannot set up the clusterset range; ClusterSetIP imports get no IPs", "err", err)
				setErr(err.Error())
				s.cfg.ClusterSetCIDRs = nil
			}
			return true
		}
		if !s.cfg.EnsureCRDs || time.Now().After(deadline) || ctx.Err() != nil {
			msg := fmt.Sprintf("%s is not served: ServiceExports and ServiceImports are ignored (install the CRDs from deploy/)", mcsv1beta1.GroupVersion)
			s.log.Warn(msg)
			setErr(msg)
			return false
		}
		reconcile.Wait(ctx, 500*time.Millisecond) // poll until served

	}
}
