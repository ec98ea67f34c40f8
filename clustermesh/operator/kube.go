package operator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/k8s"
	"github.com/braidmesh/braid/clustermesh/publish"
	"github.com/braidmesh/braid/clustermesh/remote"
	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/reconcile"
)

// DefaultMeshCompleteTimeout bounds how long the Kubernetes source waits
// for the clusters present at start to sync before it may delete imports
// and mirrors of clusters it no longer sees.
const DefaultMeshCompleteTimeout = 5 * time.Minute

// kubeClients builds the clients for cfg.Kubernetes, unless cfg.KubeClients
// already has them.
func kubeClients(cfg *Config) (k8s.Clients, error) {
	c := cfg.KubeClients
	if c.Kube != nil {
		return c, nil
	}
	rc := rest.CopyConfig(cfg.Kubernetes)
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 50, 100
	}
	var err error
	if c.Kube, err = kubernetes.NewForConfig(rc); err != nil {
		return c, fmt.Errorf("kubernetes client: %w", err)
	}
	if c.MCS, err = mcsclient.NewForConfig(rc); err != nil {
		return c, fmt.Errorf("multicluster client: %w", err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(rc); err != nil {
		return c, fmt.Errorf("dynamic client: %w", err)
	}
	return c, nil
}

// publisherAdapter gives the Kubernetes source the Publisher it expects.
type publisherAdapter struct{ p *publish.Publisher }

func (a publisherAdapter) Replace(kind clustermesh.Kind, recs []k8s.Record) error {
	out := make([]publish.Record, len(recs))
	for i, r := range recs {
		out[i] = r
	}
	return a.p.Replace(kind, out)
}
func (a publisherAdapter) Upsert(rec k8s.Record) error { return a.p.Upsert(rec) }
func (a publisherAdapter) Delete(key string)           { a.p.Delete(key) }

// meshAdapter gives the Kubernetes source the remote services. The view is
// complete once every cluster registered when the operator started is
// synced or gone (or after a timeout).
type meshAdapter struct {
	w        *remote.Watcher
	initial  map[clustermesh.ClusterName]bool
	deadline time.Time

	mu       sync.Mutex
	complete bool
}

func (m *meshAdapter) Remote() (map[clustermesh.ClusterName]k8s.RemoteCluster, bool) {
	snap := m.w.Snapshot()
	out := make(map[clustermesh.ClusterName]k8s.RemoteCluster, len(snap.Clusters))
	for name, cs := range snap.Clusters {
		out[name] = k8s.RemoteCluster{Synced: cs.Synced, Services: cs.Services}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.complete {
		m.complete = time.Now().After(m.deadline) || m.allSettled(out)
	}
	return out, m.complete
}

func (m *meshAdapter) allSettled(view map[clustermesh.ClusterName]k8s.RemoteCluster) bool {
	var gone map[clustermesh.ClusterName]bool
	for name := range m.initial {
		if rc, ok := view[name]; ok && rc.Synced {
			continue
		}
		if gone == nil {
			gone = map[clustermesh.ClusterName]bool{}
			for _, st := range m.w.Status() {
				if st.Gone {
					gone[st.Name] = true
				}
			}
		}
		if !gone[name] {
			return false
		}
	}
	return true
}

// registeredClusters lists the clusters in the mesh other than self,
// retrying until it succeeds or ctx ends.
func registeredClusters(ctx context.Context, store kvstore.Store, self clustermesh.ClusterName) map[clustermesh.ClusterName]bool {
	bo := reconcile.NewBackoff(100*time.Millisecond, 5*time.Second)
	for {
		kvs, _, err := store.List(ctx, clustermesh.ClustersPrefix)
		if err == nil {
			out := map[clustermesh.ClusterName]bool{}
			for _, kv := range kvs {
				if pk, err := clustermesh.ParseKey(kv.Key); err == nil && pk.Config && pk.Cluster != self {
					out[pk.Cluster] = true
				}
			}
			return out
		}
		if !reconcile.Wait(ctx, bo.Next()) {
			return nil
		}
	}
}

// runKubernetes publishes the cluster behind cfg.Kubernetes until ctx is
// done.
func (o *Operator) runKubernetes(ctx context.Context) error {
	clients, err := kubeClients(&o.cfg)
	if err != nil {
		return err
	}
	initial := registeredClusters(ctx, o.store, o.cfg.Cluster.Name)
	if ctx.Err() != nil {
		return nil
	}
	timeout := o.cfg.MeshCompleteTimeout
	if timeout == 0 {
		timeout = DefaultMeshCompleteTimeout
	}
	mesh := &meshAdapter{w: o.watcher, initial: initial, deadline: time.Now().Add(timeout)}
	src, err := k8s.New(k8s.Config{Cluster: o.cfg.Cluster, EnsureCRDs: o.cfg.EnsureCRDs, ClusterSetCIDRs: o.cfg.ClusterSetCIDRs},
		clients, publisherAdapter{o.pub}, o.store, mesh, o.log, o.reg)
	if err != nil {
		return err
	}
	o.mu.Lock()
	o.kube = src
	o.mu.Unlock()
	o.watcher.Notify(ctx, src.MeshChanged)
	return src.Run(ctx)
}
