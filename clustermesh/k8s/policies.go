package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
)

// PolicyWatcher follows the cluster's NetworkPolicies for an agent, which
// enforces them for its node's pods.
//
// Run watches until its context ends; NetworkPolicies and Synced are safe
// for concurrent use and never block.
type PolicyWatcher struct {
	client kubernetes.Interface
	log    *slog.Logger

	mu     sync.Mutex
	lister networkinglisters.NetworkPolicyLister
	synced bool
}

// NewPolicyWatcher returns a watcher over client. It starts nothing.
func NewPolicyWatcher(client kubernetes.Interface, log *slog.Logger) *PolicyWatcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PolicyWatcher{client: client, log: log}
}

// NetworkPolicies returns every NetworkPolicy, and whether the list is
// complete (the informer synced). The objects are shared: do not modify
// them.
func (w *PolicyWatcher) NetworkPolicies() ([]*networkingv1.NetworkPolicy, bool) {
	w.mu.Lock()
	l, synced := w.lister, w.synced
	w.mu.Unlock()
	if !synced {
		return nil, false
	}
	out, err := l.List(labels.Everything())
	if err != nil {
		return nil, false
	}
	return out, true
}

// Run watches NetworkPolicies until ctx ends, calling changed (which must
// not block) once they synced and after every change.
func (w *PolicyWatcher) Run(ctx context.Context, changed func()) error {
	f := informers.NewSharedInformerFactoryWithOptions(w.client, 0, informers.WithTransform(func(obj any) (any, error) {
		if p, ok := obj.(*networkingv1.NetworkPolicy); ok {
			p.ManagedFields = nil
			p.Annotations = nil
		}
		return obj, nil
	}))
	inf := f.Networking().V1().NetworkPolicies()
	if _, err := inf.Informer().AddEventHandler(handler(func(any) {
		w.mu.Lock()
		synced := w.synced
		w.mu.Unlock()
		if synced {
			changed()
		}
	})); err != nil {
		return fmt.Errorf("watch network policies: %w", err)
	}
	lister := inf.Lister()
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil
	}
	w.mu.Lock()
	w.lister, w.synced = lister, true
	w.mu.Unlock()
	w.log.Info("network policies synced")
	changed()
	<-ctx.Done()
	return nil
}
