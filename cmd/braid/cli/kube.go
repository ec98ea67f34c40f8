package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// fieldManager owns what braid applies with server-side apply.
const fieldManager = "braid"

// Namespace and Secret that hold a joined cluster's credentials.
const (
	braidNamespace = "braid-system"
	joinSecret     = "braid-join"
	joinSecretKey  = "join.json"
)

// kubeFlags selects a Kubernetes cluster the way kubectl does.
type kubeFlags struct {
	kubeconfig, context string
}

func (k *kubeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	cmd.Flags().StringVar(&k.context, "context", "", "kubeconfig context to use (default: the current one)")
}

// kube is a connection to one cluster.
type kube struct {
	cfg    *rest.Config
	client kubernetes.Interface
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func (k *kubeFlags) connect() (*kube, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if k.kubeconfig != "" {
		rules.ExplicitPath = k.kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w (pass --kubeconfig or --context)", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &kube{cfg: cfg, client: client, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))}, nil
}

func (k *kube) resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		// CRDs applied a moment ago: rediscover once.
		if rm, ok := k.mapper.(meta.ResettableRESTMapper); ok {
			rm.Reset()
			m, err = k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", gvk.Kind, o.GetName(), err)
		}
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return k.dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return k.dyn.Resource(m.Resource), nil
}

// apply applies o with server-side apply, taking ownership of its fields.
func (k *kube) apply(ctx context.Context, o *unstructured.Unstructured) error {
	r, err := k.resource(o)
	if err != nil {
		return err
	}
	b, err := o.MarshalJSON()
	if err != nil {
		return err
	}
	force := true
	if _, err := r.Patch(ctx, o.GetName(), types.ApplyPatchType, b, metav1.PatchOptions{FieldManager: fieldManager, Force: &force}); err != nil {
		return fmt.Errorf("apply %s %s: %w", o.GetKind(), qualified(o), err)
	}
	return nil
}

// remove deletes o; absent objects are not an error.
func (k *kube) remove(ctx context.Context, o *unstructured.Unstructured) error {
	r, err := k.resource(o)
	if err != nil {
		var nm *meta.NoKindMatchError
		if errors.As(err, &nm) {
			return nil // its CRD is gone already
		}
		return err
	}
	prop := metav1.DeletePropagationBackground
	if err := r.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: &prop}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s %s: %w", o.GetKind(), qualified(o), err)
	}
	return nil
}

func qualified(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return ns + "/" + o.GetName()
	}
	return o.GetName()
}
