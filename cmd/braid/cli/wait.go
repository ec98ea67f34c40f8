package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/kvstore"
)

// waitJoined waits until the operator has published every kind (its sync
// markers are in the mesh) and the operator Deployment and agent DaemonSet
// are rolled out with every pod ready. It reports progress on out and, on
// timeout, says what is not ready.
func waitJoined(ctx context.Context, out io.Writer, k *kube, creds join.Credentials) error {
	store, err := join.Connect(ctx, creds, nil)
	if err != nil {
		return fmt.Errorf("wait: %w", err)
	}
	defer store.Close()
	if err := waitOperatorSynced(ctx, out, store, creds.Cluster); err != nil {
		return err
	}
	return waitRollout(ctx, out, k)
}

// waitOperatorSynced watches cluster's sync markers until every kind has
// one.
func waitOperatorSynced(ctx context.Context, out io.Writer, store kvstore.Store, cluster clustermesh.ClusterName) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	owner := &clustermesh.ClusterConfig{Name: cluster}
	synced := map[clustermesh.Kind]int{}
	missing := func() []string {
		var m []string
		for _, k := range clustermesh.Kinds {
			if _, ok := synced[k]; !ok {
				m = append(m, string(k))
			}
		}
		return m
	}
	fmt.Fprintf(out, "• waiting for the operator to publish %s\n", strings.Join(missing(), ", "))
	for ev := range store.Watch(wctx, clustermesh.SyncedPrefix(cluster)) {
		switch ev.Kind {
		case kvstore.EventUpsert:
			kind, m, err := clustermesh.DecodeSyncMarker(owner, ev.Key, ev.Value)
			if err != nil {
				continue
			}
			if _, seen := synced[kind]; !seen {
				fmt.Fprintf(out, "  operator synced %s (%d)\n", kind, m.Entries)
			}
			synced[kind] = m.Entries
		case kvstore.EventDelete:
			if pk, err := clustermesh.ParseKey(ev.Key); err == nil {
				delete(synced, clustermesh.Kind(pk.Name))
			}
		}
		if len(missing()) == 0 {
			return nil
		}
	}
	return fmt.Errorf("operator of cluster %s has not published %s: is braid-operator running? (kubectl -n %s logs deploy/braid-operator)",
		cluster, strings.Join(missing(), ", "), braidNamespace)
}

// waitRollout polls the operator Deployment and agent DaemonSet until
// their current generation is rolled out and every pod is ready.
func waitRollout(ctx context.Context, out io.Writer, k *kube) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		state, err := rolloutState(ctx, k)
		if err == nil && state == "" {
			fmt.Fprintln(out, "  operator and every agent ready")
			return nil
		}
		if err != nil {
			state = err.Error()
		}
		if state != last {
			fmt.Fprintf(out, "  %s\n", state)
			last = state
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %s (kubectl -n %s get pods)", state, braidNamespace)
		case <-tick.C:
		}
	}
}

// rolloutState is "" when the operator and agents are ready, otherwise
// what they wait for.
func rolloutState(ctx context.Context, k *kube) (string, error) {
	d, err := k.client.AppsV1().Deployments(braidNamespace).Get(ctx, "braid-operator", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("deployment braid-operator: %w", err)
	}
	ds, err := k.client.AppsV1().DaemonSets(braidNamespace).Get(ctx, "braid-agent", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("daemonset braid-agent: %w", err)
	}
	var waiting []string
	if s := deploymentWaiting(d); s != "" {
		waiting = append(waiting, s)
	}
	if s := daemonSetWaiting(ds); s != "" {
		waiting = append(waiting, s)
	}
	slices.Sort(waiting)
	return strings.Join(waiting, "; "), nil
}

func deploymentWaiting(d *appsv1.Deployment) string {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas < want || d.Status.AvailableReplicas < want {
		return fmt.Sprintf("operator: %d of %d available", d.Status.AvailableReplicas, want)
	}
	return ""
}

func daemonSetWaiting(ds *appsv1.DaemonSet) string {
	s := ds.Status
	if s.ObservedGeneration < ds.Generation || s.UpdatedNumberScheduled < s.DesiredNumberScheduled || s.NumberReady < s.DesiredNumberScheduled {
		return fmt.Sprintf("agents: %d of %d nodes ready", s.NumberReady, s.DesiredNumberScheduled)
	}
	return ""
}
