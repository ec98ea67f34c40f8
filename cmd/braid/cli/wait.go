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
// markers are in the mesh) and the agent of every node of the cluster
// reports synced in the node status it publishes to the broker. It reports
// progress on out and, on timeout, says what is not synced and how the
// operator Deployment and agent DaemonSet are rolled out.
func waitJoined(ctx context.Context, out io.Writer, k *kube, creds join.Credentials) error {
	store, err := join.Connect(ctx, creds, nil)
	if err != nil {
		return fmt.Errorf("wait: %w", err)
	}
	defer store.Close()
	if err := waitOperatorSynced(ctx, out, store, creds.Cluster); err != nil {
		return withRollout(ctx, k, err)
	}
	if err := waitAgentsSynced(ctx, out, k, store, creds.Cluster); err != nil {
		return withRollout(ctx, k, err)
	}
	return nil
}

// withRollout adds how the workloads are rolled out to err, the likeliest
// reason why they did not report.
func withRollout(ctx context.Context, k *kube, err error) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	state, rerr := rolloutState(rctx, k)
	switch {
	case rerr != nil:
		return fmt.Errorf("%w; rollout: %v", err, rerr)
	case state != "":
		return fmt.Errorf("%w; rollout: %s (kubectl -n %s get pods)", err, state, braidNamespace)
	}
	return err
}

// waitAgentsSynced polls the cluster's Nodes and the node status their
// agents publish until every node's agent reports synced: it has listed
// the mesh and mirrored every other cluster in full.
func waitAgentsSynced(ctx context.Context, out io.Writer, k *kube, store kvstore.Store, cluster clustermesh.ClusterName) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	owner := &clustermesh.ClusterConfig{Name: cluster}
	fmt.Fprintln(out, "• waiting for the agent of every node to report synced")
	reported := map[string]string{} // node: what was last printed
	for {
		waiting, err := agentsWaiting(ctx, k, store, owner, out, reported)
		if err == nil && len(waiting) == 0 {
			fmt.Fprintf(out, "  every agent synced (%d nodes)\n", len(reported))
			return nil
		}
		if err != nil {
			waiting = []string{err.Error()}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agents of cluster %s not synced: %s (kubectl -n %s logs ds/braid-agent)", cluster, strings.Join(waiting, "; "), braidNamespace)
		case <-tick.C:
		}
	}
}

// agentsWaiting lists the nodes whose agent does not report synced yet,
// printing each node's state when it changes.
func agentsWaiting(ctx context.Context, k *kube, store kvstore.Store, owner *clustermesh.ClusterConfig, out io.Writer, reported map[string]string) ([]string, error) {
	nodes, err := k.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	kvs, _, err := store.List(ctx, clustermesh.NodeStatusPrefix(owner.Name))
	if err != nil {
		return nil, fmt.Errorf("read node status: %w", err)
	}
	statuses := map[string]clustermesh.NodeStatus{}
	for _, kv := range kvs {
		s, err := clustermesh.DecodeNodeStatus(owner, kv.Key, kv.Value)
		if err != nil {
			continue // not an agent's: the page reports it
		}
		statuses[s.Node] = s
	}
	var waiting []string
	for _, n := range nodes.Items {
		s, ok := statuses[n.Name]
		state := "synced"
		switch {
		case !ok:
			state = "no status from its agent yet"
		case !s.Synced:
			state = "agent syncing"
			if len(s.Problems) > 0 {
				state += ": " + s.Problems[0]
			}
		}
		if reported[n.Name] != state {
			fmt.Fprintf(out, "  node %s: %s\n", n.Name, state)
			reported[n.Name] = state
		}
		if state != "synced" {
			waiting = append(waiting, "node "+n.Name+": "+state)
		}
	}
	return waiting, nil
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
